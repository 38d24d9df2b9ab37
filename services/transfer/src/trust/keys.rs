//! The keys a policy trusts: GPG keyrings for simple signing (verified
//! with rpgp), and sigstore public keys (ECDSA P-256, PEM).

use std::io::Read;

use imaged_model::{Digest, Reference};
use pgp::composed::{Deserializable, Message, SignedPublicKey};

use super::identity::SignedIdentity;
use super::lookaside::MAX_SIGNATURE;
use super::signatures::Attachment;
use imaged_model::signature::attachment::{SIGNATURE_ANNOTATION, SIGNATURE_MEDIA_TYPE};
use imaged_model::signature::payload::{self, SIGSTORE, SIMPLE_SIGNING};

/// The public keys of one `signedBy` requirement.
#[derive(Debug)]
pub struct GpgKeys {
    keys: Vec<SignedPublicKey>,
}

impl GpgKeys {
    /// Reads keyrings (binary, as `gpg --export` writes them, or
    /// armored); every key's self-signatures must hold.
    pub fn parse(keyrings: &[Vec<u8>]) -> Result<GpgKeys, String> {
        let mut keys = Vec::new();
        for keyring in keyrings {
            let (parsed, _) = SignedPublicKey::from_reader_many(&keyring[..])
                .map_err(|e| format!("not a GPG keyring: {e}"))?;
            for key in parsed {
                let key = key.map_err(|e| format!("not a GPG keyring: {e}"))?;
                key.verify_bindings()
                    .map_err(|e| format!("a key's self-signature does not hold: {e}"))?;
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err("the keyring holds no public key".into());
        }
        Ok(GpgKeys { keys })
    }

    /// The signed payload of `signature`, if one of the keys (or one of
    /// their subkeys) made it. The payload is not looked at before.
    fn open(&self, signature: &[u8]) -> Result<Vec<u8>, String> {
        let invalid = |e: &dyn std::fmt::Display| format!("Invalid GPG signature: {e}");
        let message = Message::from_bytes(signature).map_err(|e| invalid(&e))?;
        let mut message = message.decompress().map_err(|e| invalid(&e))?;
        if !message.is_signed() {
            return Err(invalid(&"not a signed message"));
        }
        // Read it all (the signature covers all of it), but no more than
        // a signature may hold once inflated.
        let mut data = Vec::new();
        (&mut message)
            .take(MAX_SIGNATURE + 1)
            .read_to_end(&mut data)
            .map_err(|e| invalid(&e))?;
        if data.len() as u64 > MAX_SIGNATURE {
            return Err(invalid(&"the signed payload is too large"));
        }
        for key in &self.keys {
            if message.verify(&key.primary_key).is_ok() {
                return Ok(data);
            }
            for subkey in &key.public_subkeys {
                if message.verify(&subkey.key).is_ok() {
                    return Ok(data);
                }
            }
        }
        Err(invalid(&"not made by a trusted key"))
    }

    /// Whether `signature` is a valid simple signing of `manifest` by one
    /// of the keys, claiming an identity `identity` accepts for
    /// `reference`; otherwise why not.
    pub fn accepts(
        &self,
        signature: &[u8],
        identity: &SignedIdentity,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<(), String> {
        let payload = self.open(signature)?;
        claim_accepted(&payload, SIMPLE_SIGNING, identity, reference, manifest)
    }
}

/// Whether the verified `payload` (of type `kind`) claims `manifest`
/// under an identity `identity` accepts for `reference`; otherwise why
/// not. The digest is checked first, as containers/image does.
fn claim_accepted(
    payload: &[u8],
    kind: &str,
    identity: &SignedIdentity,
    reference: &Reference,
    manifest: &Digest,
) -> Result<(), String> {
    let claim = payload::parse(payload, kind)?;
    if claim.manifest_digest != *manifest {
        return Err(format!(
            "Signature for docker-manifest-digest {} does not match {manifest}",
            claim.manifest_digest
        ));
    }
    let signed = Reference::parse(&claim.docker_reference).map_err(|e| {
        format!(
            "Signature has an invalid docker-reference {:?}: {e}",
            claim.docker_reference
        )
    })?;
    if !identity.matches(reference, &signed) {
        return Err(format!(
            "Signature for identity {} is not accepted",
            claim.docker_reference
        ));
    }
    Ok(())
}

/// The public key of one `sigstoreSigned` requirement.
#[derive(Debug)]
pub struct SigstoreKey {
    key: p256::ecdsa::VerifyingKey,
}

impl SigstoreKey {
    /// Reads a PEM public key (as `cosign generate-key-pair` writes it).
    pub fn parse(pem: &[u8]) -> Result<SigstoreKey, String> {
        use p256::pkcs8::DecodePublicKey;
        let text = std::str::from_utf8(pem).map_err(|_| "the key is not PEM text".to_string())?;
        let key = p256::PublicKey::from_public_key_pem(text)
            .map_err(|e| format!("not an ECDSA P-256 public key: {e}"))?;
        Ok(SigstoreKey { key: key.into() })
    }

    /// Whether `attachment` is a sigstore signature of `manifest` by this
    /// key (ECDSA P-256 over SHA-256 of the payload, ASN.1 DER, base64 in
    /// the signature annotation), claiming an identity `identity` accepts
    /// for `reference`; otherwise why not. The payload is not looked at
    /// before the signature holds.
    pub fn accepts(
        &self,
        attachment: &Attachment,
        identity: &SignedIdentity,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<(), String> {
        use base64::Engine as _;
        use p256::ecdsa::signature::Verifier as _;
        if attachment.media_type != SIGNATURE_MEDIA_TYPE {
            return Err(format!(
                "not a sigstore signature: media type {:?}",
                attachment.media_type
            ));
        }
        let encoded = attachment
            .annotations
            .get(SIGNATURE_ANNOTATION)
            .ok_or_else(|| format!("missing {SIGNATURE_ANNOTATION} annotation"))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("Invalid sigstore signature: base64 decoding: {e}"))?;
        let signature = p256::ecdsa::Signature::from_der(&der)
            .map_err(|e| format!("Invalid sigstore signature: {e}"))?;
        // Go's signatures are not normalized; (r, s) and (r, n - s) are
        // the same signature.
        let signature = signature.normalize_s().unwrap_or(signature);
        self.key
            .verify(&attachment.payload, &signature)
            .map_err(|_| {
                "Invalid sigstore signature: cryptographic signature verification failed"
                    .to_string()
            })?;
        claim_accepted(&attachment.payload, SIGSTORE, identity, reference, manifest)
    }
}
