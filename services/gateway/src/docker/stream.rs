//! Docker's streamed answers: JSON messages one per line (`jsonmessage`:
//! `status`, `id`, `progressDetail`, `stream`, `aux`, `errorDetail`),
//! which the docker CLI draws as progress bars, and raw byte streams.

use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};

/// A boxed stream of gRPC answers.
pub type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// Waits for the first answer of `answers`, so that an error the call
/// fails with before anything happened (no such image, unknown manifest)
/// becomes the HTTP status, as in Docker; later errors go in the stream.
pub async fn started<T: Send + 'static>(
    mut answers: Answers<T>,
) -> ApiResult<impl Stream<Item = Result<T, tonic::Status>> + Send + 'static> {
    let first = match answers.next().await {
        Some(Err(status)) => return Err(ApiError::from(status)),
        first => first,
    };
    Ok(futures::stream::iter(first).chain(answers))
}

/// A JSON-lines answer (`application/json`, each message followed by
/// CRLF as Moby's stream formatter writes it). `messages` turns each
/// answer into its lines; a failed answer ends the stream with Docker's
/// error message, which the CLI prints and exits 1 on.
pub fn json_lines<T, F>(
    answers: impl Stream<Item = Result<T, tonic::Status>> + Send + 'static,
    mut messages: F,
) -> Response
where
    T: Send + 'static,
    F: FnMut(T) -> Vec<Value> + Send + 'static,
{
    let lines = answers
        .map(move |answer| match answer {
            Ok(answer) => messages(answer),
            Err(status) => vec![error_message(status.message())],
        })
        .flat_map(futures::stream::iter)
        .map(|message| {
            let mut line = message.to_string();
            line.push_str("\r\n");
            Ok::<_, std::convert::Infallible>(Bytes::from(line))
        });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Docker's in-stream error.
pub fn error_message(message: &str) -> Value {
    json!({ "errorDetail": { "message": message }, "error": message })
}

/// A status line, for a layer when `id` is not empty.
pub fn status(id: &str, status: &str) -> Value {
    if id.is_empty() {
        json!({ "status": status })
    } else {
        json!({ "status": status, "progressDetail": {}, "id": id })
    }
}

/// A progress line: the CLI draws the bar from `progressDetail`.
pub fn progress(id: &str, status: &str, current: i64, total: i64) -> Value {
    json!({
        "status": status,
        "progressDetail": { "current": current, "total": total },
        "id": id,
    })
}

/// A byte-stream answer (a tar), of chunks from `answers`. An error after
/// the first chunk can only cut the stream, as in Docker.
pub fn bytes<T>(
    answers: impl Stream<Item = Result<T, tonic::Status>> + Send + 'static,
    content_type: &'static str,
    chunk: fn(T) -> Vec<u8>,
) -> Response
where
    T: Send + 'static,
{
    let body = answers.map(move |answer| match answer {
        Ok(answer) => Ok(Bytes::from(chunk(answer))),
        Err(status) => Err(std::io::Error::other(status.message().to_string())),
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}
