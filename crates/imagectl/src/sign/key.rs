//! Sigstore private keys in the format cosign and skopeo use: an ECDSA
//! P-256 key as PKCS#8, sealed with NaCl secretbox under a key scrypt
//! derives from a passphrase, as JSON (go-securesystemslib's
//! `encrypted`), in a PEM block `ENCRYPTED COSIGN PRIVATE KEY` (or
//! `ENCRYPTED SIGSTORE PRIVATE KEY`). The public half is a PEM `PUBLIC
//! KEY`, what a policy's `sigstoreSigned` `keyPath` names.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use p256::ecdsa::SigningKey;
use p256::pkcs8::der::pem::{self, LineEnding};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use serde::{Deserialize, Serialize};

/// The label skopeo's and cosign's released versions write.
const COSIGN_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// The label newer cosign writes; read too.
const SIGSTORE_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";

/// scrypt's cost as cosign sets it: N = 2^15, r = 8, p = 1.
const LOG_N: u8 = 15;
const R: u32 = 8;
const P: u32 = 1;
/// A key file asking scrypt for more memory than this is refused.
const MAX_SCRYPT_MEMORY: u64 = 256 << 20;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

/// Go's `[]byte` in JSON: standard base64.
mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// The secretbox key scrypt derives from `passphrase`.
fn derive(passphrase: &[u8], salt: &[u8], params: &ScryptParams) -> anyhow::Result<[u8; 32]> {
    if !params.n.is_power_of_two() || params.n < 2 {
        bail!("scrypt's N must be a power of two");
    }
    let memory = 128u64
        .saturating_mul(params.r as u64)
        .saturating_mul(params.n)
        .saturating_mul(params.p.max(1) as u64);
    if memory > MAX_SCRYPT_MEMORY {
        bail!("the key's scrypt parameters ask for more than {MAX_SCRYPT_MEMORY} bytes");
    }
    let log_n = params.n.trailing_zeros() as u8;
    let params = scrypt::Params::new(log_n, params.r, params.p, 32)
        .map_err(|e| anyhow::anyhow!("scrypt parameters: {e}"))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase, salt, &params, &mut key)
        .map_err(|e| anyhow::anyhow!("scrypt: {e}"))?;
    Ok(key)
}

/// Opens the private key file text `pem_text` with `passphrase`.
pub fn decrypt(pem_text: &[u8], passphrase: &[u8]) -> anyhow::Result<SigningKey> {
    let text = std::str::from_utf8(pem_text).context("the key is not PEM text")?;
    let (label, body) = pem::decode_vec(text.trim().as_bytes())
        .map_err(|e| anyhow::anyhow!("invalid pem block: {e}"))?;
    if label != COSIGN_LABEL && label != SIGSTORE_LABEL {
        bail!("unsupported pem type: {label}");
    }
    let sealed: Sealed = serde_json::from_slice(&body).context("the sealed key")?;
    if sealed.kdf.name != "scrypt" || sealed.cipher.name != "nacl/secretbox" {
        bail!(
            "unsupported key encryption {}/{}",
            sealed.kdf.name,
            sealed.cipher.name
        );
    }
    if sealed.cipher.nonce.len() != 24 {
        bail!("the key's nonce is not 24 bytes");
    }
    let key = derive(passphrase, &sealed.kdf.salt, &sealed.kdf.params)?;
    let plain = XSalsa20Poly1305::new(&key.into())
        .decrypt(
            Nonce::from_slice(&sealed.cipher.nonce),
            &sealed.ciphertext[..],
        )
        .map_err(|_| anyhow::anyhow!("decrypt: the passphrase is wrong or the key is damaged"))?;
    let secret = p256::SecretKey::from_pkcs8_der(&plain)
        .map_err(|e| anyhow::anyhow!("only ECDSA P-256 keys are supported: {e}"))?;
    Ok(SigningKey::from(secret))
}

/// A new key pair: the sealed private key file text and the public key
/// PEM.
pub fn generate(passphrase: &[u8]) -> anyhow::Result<(String, String)> {
    let secret = loop {
        // ThreadRng is a CSPRNG seeded from the OS.
        if let Ok(secret) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            break secret;
        }
    };
    let pkcs8 = secret
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
    let params = ScryptParams {
        n: 1 << LOG_N,
        r: R,
        p: P,
    };
    let salt = rand::random::<[u8; 32]>().to_vec();
    let nonce = rand::random::<[u8; 24]>().to_vec();
    let key = derive(passphrase, &salt, &params)?;
    let ciphertext = XSalsa20Poly1305::new(&key.into())
        .encrypt(Nonce::from_slice(&nonce), pkcs8.as_bytes())
        .map_err(|_| anyhow::anyhow!("sealing the key"))?;
    let sealed = Sealed {
        kdf: Kdf {
            name: "scrypt".into(),
            params,
            salt,
        },
        cipher: Cipher {
            name: "nacl/secretbox".into(),
            nonce,
        },
        ciphertext,
    };
    let body = serde_json::to_vec(&sealed)?;
    let private = pem::encode_string(COSIGN_LABEL, LineEnding::LF, &body)
        .map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
    let public = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
    Ok((private, public))
}

/// The passphrase: the first line of `file` (as skopeo's
/// `--sign-passphrase-file`), else asked on the terminal.
pub fn passphrase(file: Option<&Path>, prompt: &str) -> anyhow::Result<Vec<u8>> {
    let line = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        }
        None => {
            use std::io::IsTerminal as _;
            if !std::io::stdin().is_terminal() {
                bail!("no passphrase: give a passphrase file, or run on a terminal");
            }
            crate::login::prompt(prompt, true)?
        }
    };
    Ok(line.trim_end_matches('\r').as_bytes().to_vec())
}

/// The signature of `payload` by `key`: ECDSA P-256 over SHA-256, ASN.1
/// DER, base64 (the attachment's annotation).
pub fn sign(key: &SigningKey, payload: &[u8]) -> String {
    use p256::ecdsa::signature::Signer as _;
    let signature: p256::ecdsa::Signature = key.sign(payload);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_opens_with_its_passphrase_only_and_signs_for_its_public_key() {
        use p256::ecdsa::signature::Verifier as _;
        use p256::pkcs8::DecodePublicKey;
        let (private, public) = generate(b"secret").unwrap();
        assert!(private.starts_with("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----"));
        assert!(decrypt(private.as_bytes(), b"wrong").is_err());
        let key = decrypt(private.as_bytes(), b"secret").unwrap();
        let signed = sign(&key, b"payload");
        let der = base64::engine::general_purpose::STANDARD
            .decode(signed)
            .unwrap();
        let signature = p256::ecdsa::Signature::from_der(&der).unwrap();
        let public = p256::ecdsa::VerifyingKey::from_public_key_pem(&public).unwrap();
        assert!(public.verify(b"payload", &signature).is_ok());
        assert!(public.verify(b"other", &signature).is_err());
        // Hostile parameters are refused before scrypt runs.
        let body = serde_json::json!({
            "kdf": {"name": "scrypt", "params": {"N": 1u64 << 40, "r": 8, "p": 1}, "salt": ""},
            "cipher": {"name": "nacl/secretbox", "nonce": base64::engine::general_purpose::STANDARD.encode([0u8; 24])},
            "ciphertext": ""
        });
        let hostile =
            pem::encode_string(COSIGN_LABEL, LineEnding::LF, body.to_string().as_bytes()).unwrap();
        let err = decrypt(hostile.as_bytes(), b"secret").unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }
}
