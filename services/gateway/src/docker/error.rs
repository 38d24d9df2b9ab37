//! Errors as the Docker Engine API gives them: an HTTP status and
//! `{"message": "..."}`, which the docker CLI prints as "Error response
//! from daemon: <message>".

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tonic::Code;

/// An error answer of the Docker Engine API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    /// 400: a bad parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

/// The one mapping of imaged's gRPC codes to Docker's HTTP statuses
/// (Moby's `errdefs` → `httpstatus`): not found 404, conflicts 409, bad
/// parameters 400, the rest 500. A registry refusing credentials is a 500
/// in Docker too ("no basic auth credentials"): a 401 would make the
/// docker CLI ask for a login on the terminal and retry.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = match status.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status: code,
            message: status.message().to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

/// What a handler answers.
pub type ApiResult<T> = Result<T, ApiError>;
