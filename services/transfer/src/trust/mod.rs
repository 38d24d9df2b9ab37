//! Which images may come onto the node: a containers-policy.json(5)
//! policy (global, or the pod's namespace's), checked against the
//! signatures registries.d(5) says where to find, before a pull stores
//! anything. skopeo, which reads the same files, is the oracle the tests
//! compare with.

pub mod identity;
pub mod keys;
pub mod lookaside;
pub mod policy;
pub mod signatures;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use imaged_common::Error;
use imaged_model::{Digest, Reference};
use tonic::Code;

use imaged_model::signature::registries_d::RegistriesD;
use policy::{Policy, Requirement};
use signatures::{Attachments, Signature};

use imaged_common::error::POLICY_REJECTED;

/// At most this many accepted images are remembered.
const CACHE: usize = 4096;

/// An image the policy refused: why, under which scope of which policy.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{POLICY_REJECTED}{reason} (image {reference}; policy {policy}, scope {scope})")]
pub struct Refusal {
    pub reason: String,
    /// The policy file and the scope whose requirements refused it.
    pub policy: String,
    pub scope: String,
    pub reference: String,
}

/// The configured policies and where signatures are.
pub struct Trust {
    /// `None`: no policy, everything is accepted (as before issue 30).
    global: Option<Arc<Policy>>,
    /// `<dir>/<namespace>.json`, by namespace.
    namespaces: HashMap<String, Arc<Policy>>,
    registries: RegistriesD,
    /// (policy, image identity, manifest) accepted already.
    accepted: Mutex<HashSet<(String, String, Digest)>>,
}

impl Trust {
    /// No policy: every image is accepted.
    pub fn open() -> Trust {
        Trust {
            global: None,
            namespaces: HashMap::new(),
            registries: RegistriesD::default(),
            accepted: Mutex::new(HashSet::new()),
        }
    }

    /// Reads the policy files and registries.d; any that cannot be used
    /// refuses all of them (the process does not start half-protected).
    pub fn read(
        policy: Option<&Path>,
        policy_dir: Option<&Path>,
        registries_d: Option<&Path>,
    ) -> Result<Trust, String> {
        let global = policy
            .map(|p| Policy::read(p).map(Arc::new))
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut namespaces = HashMap::new();
        if let Some(dir) = policy_dir {
            for path in imaged_model::signature::config_files(dir, "json")? {
                let Some(namespace) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let read = Policy::read(&path).map_err(|e| e.to_string())?;
                namespaces.insert(namespace.to_string(), Arc::new(read));
            }
        }
        let registries = match registries_d {
            Some(dir) => RegistriesD::read(dir)?,
            None => RegistriesD::default(),
        };
        Ok(Trust {
            global,
            namespaces,
            registries,
            accepted: Mutex::new(HashSet::new()),
        })
    }

    /// Whether any policy is configured.
    pub fn enforcing(&self) -> bool {
        self.global.is_some() || !self.namespaces.is_empty()
    }

    /// The policy for a pull from `namespace` (none: the global one).
    fn policy(&self, namespace: Option<&str>) -> Option<&Arc<Policy>> {
        namespace
            .and_then(|n| self.namespaces.get(n))
            .or(self.global.as_ref())
    }

    /// Checks the image `reference` names, whose top manifest is
    /// `manifest`, for a pull from `namespace`; an `http(s)://` lookaside
    /// is read with `http` (the registries' shared client), sigstore
    /// attachments from `attachments` (the pull's registry). A refusal is
    /// `PERMISSION_DENIED`, its cause a [`Refusal`]; signatures that
    /// cannot be read are `UNAVAILABLE` (no decision was made).
    pub async fn check(
        &self,
        http: &reqwest::Client,
        attachments: &dyn Attachments,
        reference: &Reference,
        manifest: &Digest,
        namespace: Option<&str>,
    ) -> Result<(), Error> {
        let Some(policy) = self.policy(namespace) else {
            return Ok(());
        };
        let shown =
            imaged_model::signature::identity(reference).unwrap_or_else(|| reference.name());
        let key = (policy.origin.clone(), shown.clone(), manifest.clone());
        if self.lock().contains(&key) {
            return Ok(());
        }
        let (scope, requirements) = policy.requirements_for(reference);
        let refuse = |reason: String| {
            let refusal = Refusal {
                reason,
                policy: policy.origin.clone(),
                scope: if scope.is_empty() {
                    "\"\"".into()
                } else {
                    scope.to_string()
                },
                reference: shown.clone(),
            };
            tracing::warn!(
                image = %refusal.reference,
                policy = %refusal.policy,
                scope = %refusal.scope,
                "{refusal}"
            );
            Error::caused(Code::PermissionDenied, refusal)
        };
        let mut signatures: Option<Vec<Signature>> = None;
        for requirement in requirements {
            if let Requirement::InsecureAcceptAnything = requirement {
                continue;
            }
            if let Requirement::Reject = requirement {
                return Err(refuse(format!(
                    "Running image docker://{shown} is rejected by policy."
                )));
            }
            if signatures.is_none() {
                let read =
                    signatures::read(&self.registries, http, attachments, reference, manifest)
                        .await?;
                signatures = Some(read);
            }
            let found = signatures.as_deref().unwrap_or_default();
            judge(requirement, found, reference, manifest).map_err(&refuse)?;
        }
        let mut accepted = self.lock();
        if accepted.len() >= CACHE {
            accepted.clear();
        }
        accepted.insert(key);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String, Digest)>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether one of `found` meets the signature requirement `requirement`
/// for `manifest` of `reference`; otherwise why not, in containers/image's
/// words. Signatures of the other kind are not this requirement's.
fn judge(
    requirement: &Requirement,
    found: &[Signature],
    reference: &Reference,
    manifest: &Digest,
) -> Result<(), String> {
    let mut reasons = Vec::new();
    let mut others = 0;
    for signature in found {
        let verdict = match (requirement, signature) {
            (Requirement::SignedBy { keys, identity }, Signature::Simple(blob)) => {
                keys.accepts(blob, identity, reference, manifest)
            }
            (Requirement::SigstoreSigned { key, identity }, Signature::Sigstore(attachment))
                if attachment.media_type
                    == imaged_model::signature::attachment::SIGNATURE_MEDIA_TYPE =>
            {
                key.accepts(attachment, identity, reference, manifest)
            }
            _ => {
                others += 1;
                continue;
            }
        };
        match verdict {
            Ok(()) => return Ok(()),
            Err(reason) => reasons.push(reason),
        }
    }
    Err(match reasons.len() {
        0 if others == 0 => "A signature was required, but no signature exists".into(),
        0 => format!(
            "A signature was required, but no signature exists ({others} signatures of another kind)"
        ),
        _ => format!(
            "None of the signatures were accepted, reasons: {}",
            reasons.join("; ")
        ),
    })
}

#[cfg(test)]
mod tests;
