//! `POST /auth` (`docker login`): the credentials are checked against the
//! registry through `imaged.v1.Registries/Login`; nothing is kept, as
//! dockerd keeps nothing. The docker CLI stores what it stores.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use imaged_api::v1::LoginRequest;
use serde_json::{Value, json};
use tonic::Code;

use super::Api;
use super::error::{ApiError, ApiResult};
use super::params;

/// Answers `{"IdentityToken", "Status": "Login Succeeded"}`, or Docker's
/// 401 with the registry's reason for credentials it refused (the one
/// route where Docker answers 401: the CLI then says the login failed).
pub async fn login(State(api): State<Api>, body: Bytes) -> ApiResult<Json<Value>> {
    let (server, auth) = params::login_body(&body)?;
    let answer = api
        .registries()
        .login(LoginRequest { server, auth })
        .await
        .map_err(|status| {
            let refused = status.code() == Code::Unauthenticated;
            let mut err = ApiError::from(status);
            if refused {
                err.status = StatusCode::UNAUTHORIZED;
            }
            err
        })?
        .into_inner();
    Ok(Json(json!({
        "IdentityToken": answer.identity_token,
        "Status": answer.status,
    })))
}
