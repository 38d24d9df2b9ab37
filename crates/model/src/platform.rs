//! Platforms (OS, architecture, variant): normalization and matching as
//! containerd's `platforms` package (vendored in Moby v28) does them.

use std::fmt;

use crate::Error;

/// An OS/architecture/variant triple, as written in an image config or an
/// index entry (not normalized).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: &str) -> Self {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.to_string(),
        }
    }

    /// The platform this process runs on (`DefaultSpec`).
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "x86" => ("386", ""),
            "aarch64" => ("arm64", "v8"),
            "arm" => ("arm", "v7"),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            "riscv64" => ("riscv64", ""),
            other => (other, ""),
        };
        Platform::new(std::env::consts::OS, architecture, variant)
    }

    /// Parses `os[/arch[/variant]]`; a lone architecture gets the host OS
    /// and a lone OS the host architecture.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        if s.is_empty() || s.contains('*') || parts.len() > 3 || parts.iter().any(|p| p.is_empty())
        {
            return Err(Error::InvalidArgument(format!(
                "invalid platform {s:?}: expected os[/arch[/variant]]"
            )));
        }
        let host = Platform::host();
        let platform = match parts.as_slice() {
            [one] if is_known_os(one) => Platform::new(one, &host.architecture, &host.variant),
            [one] => Platform::new(&host.os, one, ""),
            [os, arch] => Platform::new(os, arch, ""),
            [os, arch, variant] => Platform::new(os, arch, variant),
            _ => unreachable!("at most three parts"),
        };
        Ok(platform)
    }

    /// containerd's `Normalize`: lowercase, canonical architecture names
    /// and variants (`aarch64` is `arm64`, `arm64/v8` is `arm64`, `arm` is
    /// `arm/v7`, an empty OS is the host's).
    pub fn normalize(&self) -> Platform {
        let mut os = self.os.to_lowercase();
        if os.is_empty() {
            os = Platform::host().os;
        }
        if os == "macos" {
            os = "darwin".to_string();
        }
        let arch = self.architecture.to_lowercase();
        let variant = self.variant.to_lowercase();
        let (architecture, variant) = match arch.as_str() {
            "i386" => ("386".to_string(), String::new()),
            "x86_64" | "x86-64" | "amd64" => (
                "amd64".to_string(),
                if variant == "v1" {
                    String::new()
                } else {
                    variant
                },
            ),
            "aarch64" | "arm64" => {
                let variant = match variant.as_str() {
                    "8" | "v8" | "v8.0" => String::new(),
                    "9" | "9.0" | "v9.0" => "v9".to_string(),
                    _ => variant,
                };
                ("arm64".to_string(), variant)
            }
            "armhf" => ("arm".to_string(), "v7".to_string()),
            "armel" => ("arm".to_string(), "v6".to_string()),
            "arm" => {
                let variant = match variant.as_str() {
                    "" | "7" => "v7".to_string(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                };
                ("arm".to_string(), variant)
            }
            _ => (arch, variant),
        };
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// The platform a request asks for: the host's OS and architecture
    /// fill what it leaves empty (all empty: the host's), normalized.
    pub fn or_host(os: &str, architecture: &str, variant: &str) -> Platform {
        let host = Platform::host();
        if os.is_empty() && architecture.is_empty() {
            return host.normalize();
        }
        Platform::new(
            if os.is_empty() { &host.os } else { os },
            if architecture.is_empty() {
                &host.architecture
            } else {
                architecture
            },
            variant,
        )
        .normalize()
    }

    /// Whether an image of platform `candidate` runs on `self` (containerd's
    /// `Only`): the same platform or an older compatible one, such as
    /// `amd64/v2` on `amd64/v3`, `arm/v6` on `arm/v7`, `arm/v7` on `arm64`.
    pub fn runs(&self, candidate: &Platform) -> bool {
        let want = self.normalize();
        let have = candidate.normalize();
        if want.os != have.os {
            return false;
        }
        match want.architecture.as_str() {
            "amd64" => match have.architecture.as_str() {
                "amd64" => amd64_level(&have.variant) <= amd64_level(&want.variant),
                "386" => true,
                _ => false,
            },
            "arm" => {
                have.architecture == "arm"
                    && arm_level(&have.variant).is_some_and(|h| {
                        arm_level(&want.variant).is_some_and(|w| (5..=w).contains(&h))
                    })
            }
            "arm64" => match have.architecture.as_str() {
                "arm64" => arm64_compatible(&want.variant, &have.variant),
                "arm" => arm_level(&have.variant).is_some_and(|h| (5..=8).contains(&h)),
                _ => false,
            },
            _ => want == have,
        }
    }

    /// containerd's `OnlyStrict`: `candidate` is this very platform, once
    /// both are normalized (save and load match this way).
    pub fn is(&self, candidate: &Platform) -> bool {
        self.normalize() == candidate.normalize()
    }

    /// Moby's `OnlyPlatformWithFallback`, for image configs (which often
    /// lack a variant): [`Platform::runs`], or else a candidate without a
    /// variant whose OS and architecture match.
    pub fn runs_with_fallback(&self, candidate: &Platform) -> bool {
        if self.runs(candidate) {
            return true;
        }
        if !candidate.variant.is_empty() {
            return false;
        }
        let (want, have) = (self.normalize(), candidate.normalize());
        want.os == have.os && want.architecture == have.architecture
    }
}

impl fmt::Display for Platform {
    /// `os/arch[/variant]`, or `unknown` when the OS is empty (Docker's
    /// format in platform mismatch messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.os.is_empty() {
            return f.write_str("unknown");
        }
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

fn is_known_os(s: &str) -> bool {
    matches!(
        s.to_lowercase().as_str(),
        "linux"
            | "windows"
            | "darwin"
            | "macos"
            | "freebsd"
            | "netbsd"
            | "openbsd"
            | "solaris"
            | "illumos"
            | "android"
            | "ios"
            | "plan9"
            | "aix"
            | "js"
            | "wasip1"
            | "dragonfly"
    )
}

/// amd64 micro-architecture level: "" is v1.
fn amd64_level(variant: &str) -> u32 {
    variant
        .strip_prefix('v')
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

fn arm_level(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

/// `vM[.m]` of arm64, "" being v8.0.
fn arm64_version(variant: &str) -> Option<(u32, u32)> {
    if variant.is_empty() {
        return Some((8, 0));
    }
    let v = variant.strip_prefix('v')?;
    match v.split_once('.') {
        Some((major, minor)) => Some((major.parse().ok()?, minor.parse().ok()?)),
        None => Some((v.parse().ok()?, 0)),
    }
}

fn arm64_compatible(want: &str, have: &str) -> bool {
    let (Some((wm, wn)), Some((hm, hn))) = (arm64_version(want), arm64_version(have)) else {
        return want == have;
    };
    (hm == wm && hn <= wn) || (wm == 9 && hm == 8 && hn <= (wn + 5).min(9))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        let parts: Vec<&str> = s.split('/').collect();
        Platform::new(parts[0], parts[1], parts.get(2).copied().unwrap_or(""))
    }

    #[test]
    fn normalizes_names_and_variants() {
        assert_eq!(p("linux/aarch64/8").normalize(), p("linux/arm64"));
        assert_eq!(p("linux/arm64/v8").normalize(), p("linux/arm64"));
        assert_eq!(p("linux/arm64/9.0").normalize(), p("linux/arm64/v9"));
        assert_eq!(p("linux/x86_64/v1").normalize(), p("linux/amd64"));
        assert_eq!(p("linux/arm").normalize(), p("linux/arm/v7"));
        assert_eq!(p("linux/armel").normalize(), p("linux/arm/v6"));
        assert_eq!(p("linux/i386/x").normalize(), p("linux/386"));
        assert_eq!(p("MacOS/AMD64").normalize(), p("darwin/amd64"));
    }

    #[test]
    fn compatible_platforms_run() {
        assert!(p("linux/amd64/v3").runs(&p("linux/amd64/v2")));
        assert!(p("linux/amd64").runs(&p("linux/386")));
        assert!(!p("linux/amd64/v2").runs(&p("linux/amd64/v3")));
        assert!(p("linux/arm/v7").runs(&p("linux/arm/v6")));
        assert!(!p("linux/arm/v6").runs(&p("linux/arm/v7")));
        assert!(p("linux/arm64").runs(&p("linux/arm64/v8")));
        assert!(p("linux/arm64").runs(&p("linux/arm/v7")));
        assert!(p("linux/arm64/v9.2").runs(&p("linux/arm64/v8.7")));
        assert!(!p("linux/arm64/v8").runs(&p("linux/arm64/v9")));
        assert!(!p("linux/amd64").runs(&p("linux/arm64")));
        assert!(!p("windows/amd64").runs(&p("linux/amd64")));
        assert!(p("linux/s390x").runs(&p("linux/s390x")));
    }

    #[test]
    fn fallback_accepts_configs_without_variant() {
        assert!(p("linux/arm/v5").runs_with_fallback(&p("linux/arm")));
        assert!(!p("linux/arm/v5").runs_with_fallback(&p("linux/arm/v7")));
        assert!(p("linux/riscv64/rva22").runs_with_fallback(&p("linux/riscv64")));
    }

    #[test]
    fn strict_matching_takes_only_the_platform_itself() {
        assert!(p("linux/arm64").is(&p("linux/aarch64/v8")));
        assert!(p("linux/arm").is(&p("linux/arm/v7")));
        assert!(!p("linux/arm64").is(&p("linux/arm/v7")), "runs, but is not");
        assert!(!p("linux/amd64/v3").is(&p("linux/amd64")));
        assert!(!p("linux/amd64").is(&p("linux/386")));
    }

    #[test]
    fn parses_and_formats() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap(),
            p("linux/arm64/v8")
        );
        assert_eq!(Platform::parse("linux").unwrap().os, "linux");
        assert_eq!(Platform::parse("arm64").unwrap().architecture, "arm64");
        assert!(Platform::parse("*").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(Platform::default().to_string(), "unknown");
    }
}
