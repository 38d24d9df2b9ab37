//! The Docker Engine API's parameter forms, read into `imaged.v1` ones:
//! booleans, `filters` JSON, platforms, `X-Registry-Auth`.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use base64::Engine;
use imaged_api::v1::{Platform, RegistryAuth};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};

/// A query boolean as Moby's `httputils.BoolValue` reads it: anything but
/// "", "0", "no", "false" and "none" is true.
pub fn boolean(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        None | Some("" | "0" | "no" | "false" | "none")
    )
}

/// The values of every `key` in a query string, in order (`changes`,
/// `names` and `type` repeat).
pub fn all(query: &[(String, String)], key: &str) -> Vec<String> {
    query
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// The first value of `key`, if any.
pub fn one<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Docker's `filters` JSON in both its forms (`{"key":{"value":true}}`
/// and the older `{"key":["value"]}`) as imaged's `key=value` list.
pub fn filters(raw: Option<&str>) -> ApiResult<Vec<String>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Values {
        Set(BTreeMap<String, bool>),
        List(Vec<String>),
    }
    let Some(raw) = raw.filter(|raw| !raw.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let parsed: BTreeMap<String, Values> = serde_json::from_str(raw)
        .map_err(|err| ApiError::bad_request(format!("invalid filter: {err}")))?;
    let mut out = Vec::new();
    for (key, values) in parsed {
        let values: Vec<String> = match values {
            Values::Set(set) => set
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(v, _)| v)
                .collect(),
            Values::List(list) => list,
        };
        out.extend(values.into_iter().map(|value| format!("{key}={value}")));
    }
    Ok(out)
}

/// A platform as `/images/create` gives it (`os/arch[/variant]`) or as
/// save and load give it (OCI platform JSON); empty is none.
pub fn platform(raw: Option<&str>) -> ApiResult<Option<Platform>> {
    #[derive(Deserialize)]
    struct Oci {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: String,
    }
    let Some(raw) = raw.map(str::trim).filter(|raw| !raw.is_empty()) else {
        return Ok(None);
    };
    if raw.starts_with('{') {
        let oci: Oci = serde_json::from_str(raw)
            .map_err(|err| ApiError::bad_request(format!("invalid platform: {err}")))?;
        return Ok(Some(Platform {
            os: oci.os,
            architecture: oci.architecture,
            variant: oci.variant,
        }));
    }
    let parsed = imaged_model::platform::Platform::parse(raw)
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    Ok(Some(Platform {
        os: parsed.os,
        architecture: parsed.architecture,
        variant: parsed.variant,
    }))
}

/// Docker's `AuthConfig`, as the `X-Registry-Auth` header and `POST /auth`
/// carry it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthConfig {
    username: String,
    password: String,
    auth: String,
    identitytoken: String,
    registrytoken: String,
    serveraddress: String,
}

impl AuthConfig {
    /// The credentials it carries (`auth` is base64 of "user:password",
    /// as in config.json); `None` when it carries none.
    fn credentials(mut self) -> Option<RegistryAuth> {
        if self.username.is_empty()
            && !self.auth.is_empty()
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&self.auth)
            && let Some((user, password)) = String::from_utf8_lossy(&decoded).split_once(':')
        {
            self.username = user.to_string();
            self.password = password.to_string();
        }
        let auth = RegistryAuth {
            username: self.username,
            password: self.password,
            identity_token: self.identitytoken,
            registry_token: self.registrytoken,
        };
        (auth != RegistryAuth::default()).then_some(auth)
    }
}

/// The credentials of the `X-Registry-Auth` header (base64url JSON of
/// Docker's `AuthConfig`), if any.
pub fn registry_auth(headers: &HeaderMap) -> ApiResult<Option<RegistryAuth>> {
    let Some(raw) = headers
        .get("x-registry-auth")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let engines = [
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
        base64::engine::general_purpose::STANDARD,
    ];
    let json = engines
        .iter()
        .find_map(|engine| engine.decode(raw).ok())
        .ok_or_else(|| ApiError::bad_request("invalid X-Registry-Auth header: not base64"))?;
    let config: AuthConfig = serde_json::from_slice(&json)
        .map_err(|_| ApiError::bad_request("invalid X-Registry-Auth header: not JSON"))?;
    Ok(config.credentials())
}

/// The body of `POST /auth`: the server to log in to and the
/// credentials.
pub fn login_body(body: &[u8]) -> ApiResult<(String, Option<RegistryAuth>)> {
    let config: AuthConfig = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid auth configuration: {err}")))?;
    let server = config.serveraddress.clone();
    Ok((server, config.credentials()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_in_both_forms() {
        assert_eq!(
            filters(Some(
                r#"{"dangling":{"true":true},"reference":{"a*":true,"b":false}}"#
            ))
            .unwrap(),
            vec!["dangling=true", "reference=a*"]
        );
        assert_eq!(
            filters(Some(r#"{"label":["x=1","y"]}"#)).unwrap(),
            vec!["label=x=1", "label=y"]
        );
        assert!(filters(Some("")).unwrap().is_empty());
        assert!(filters(Some("{bad")).is_err());
    }

    #[test]
    fn booleans_as_moby_reads_them() {
        for yes in ["1", "true", "True", "yes", "anything"] {
            assert!(boolean(Some(yes)), "{yes}");
        }
        for no in ["", "0", "false", "no", "none", "FALSE"] {
            assert!(!boolean(Some(no)), "{no}");
        }
        assert!(!boolean(None));
    }

    #[test]
    fn platforms_in_both_forms() {
        let p = platform(Some("linux/arm64/v8")).unwrap().unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_str()),
            ("linux", "arm64", "v8")
        );
        let p = platform(Some(r#"{"os":"linux","architecture":"amd64"}"#))
            .unwrap()
            .unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "amd64"));
        assert!(platform(Some("")).unwrap().is_none());
        assert!(platform(Some("a/b/c/d")).is_err());
    }

    #[test]
    fn registry_auth_from_the_header() {
        let mut headers = HeaderMap::new();
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE.encode(json);
        headers.insert("x-registry-auth", encode("{}").parse().unwrap());
        assert_eq!(registry_auth(&headers).unwrap(), None);
        headers.insert(
            "x-registry-auth",
            encode(r#"{"username":"u","password":"p","serveraddress":"r"}"#)
                .parse()
                .unwrap(),
        );
        let auth = registry_auth(&headers).unwrap().unwrap();
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("u", "p"));
        headers.insert(
            "x-registry-auth",
            encode(r#"{"auth":"dTpw"}"#).parse().unwrap(),
        );
        let auth = registry_auth(&headers).unwrap().unwrap();
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("u", "p"));
        headers.insert("x-registry-auth", "!!!".parse().unwrap());
        assert!(registry_auth(&headers).is_err());
    }
}
