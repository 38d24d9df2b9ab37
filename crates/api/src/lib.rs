//! Generated types, clients and servers for every imaged contract.
//!
//! All wire types come from `proto/` through this one crate, so no service
//! or client writes a wire type by hand.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

/// The `imaged.v1` package: the public API (`Images`, `Events`, `Layers`)
/// and its messages, which users script against.
pub mod v1 {
    tonic::include_proto!("imaged.v1");
}

/// The internal contracts between the four processes
/// (`imaged.internal.v1`: `Metadata`, `Transfer`, `EventLog`). They may
/// change with imaged; where an internal call is a pure relay of a public
/// one (the gateway forwards ListImages to metadata, PullImage to
/// transfer), it takes and answers the public message, so nothing is
/// translated on the way.
pub mod internal {
    pub mod v1 {
        tonic::include_proto!("imaged.internal.v1");
    }
}

/// The CRI v1 image service (`runtime.v1`), as kubelet calls it.
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// containerd's contracts: the snapshot service imaged serves as a proxy
/// snapshotter (`containerd.services.snapshots.v1`), and the content,
/// image and lease services it calls to register its images in containerd.
pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod images {
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        pub mod leases {
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

/// The encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/imaged_descriptor.bin"));

/// A point in time as the wire carries it, from nanoseconds since the Unix
/// epoch (the one form imaged keeps times in, `imaged_model::timestamp`).
/// Instants outside the Timestamp range are clamped to its ends.
pub fn timestamp(unix_nanos: i128) -> prost_types::Timestamp {
    const NANOS: i128 = 1_000_000_000;
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, protobuf's bounds.
    let seconds = unix_nanos
        .div_euclid(NANOS)
        .clamp(-62_135_596_800, 253_402_300_799);
    prost_types::Timestamp {
        seconds: seconds as i64,
        nanos: unix_nanos.rem_euclid(NANOS) as i32,
    }
}

impl std::fmt::Debug for v1::RegistryAuth {
    /// Shows which credentials are present, never their values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

impl std::fmt::Debug for cri::AuthConfig {
    /// Shows which credentials are present, never their values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_auth_debug_hides_secrets() {
        let auth = super::v1::RegistryAuth {
            username: "user".into(),
            password: "hunter2".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
        };
        let shown = format!(
            "{auth:?} {:?}",
            super::v1::PullImageRequest {
                auth: Some(auth.clone()),
                ..Default::default()
            }
        );
        for secret in ["hunter2", "idtok", "regtok"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("user"));
    }
}
