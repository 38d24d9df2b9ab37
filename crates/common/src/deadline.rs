//! Passing a caller's deadline on to the next hop. A gRPC deadline travels
//! as the `grpc-timeout` header; a service that calls another on the
//! caller's behalf gives that call what is left of it, so work downstream
//! stops when the caller has stopped waiting. (Cancellation needs nothing:
//! dropping the incoming call drops the outgoing one.)

use std::time::Duration;

use tonic::Request;

/// The deadline `request` carries, and its message.
pub fn split<T>(request: Request<T>) -> (Option<Duration>, T) {
    let deadline = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout);
    (deadline, request.into_inner())
}

/// `message` as a request with `deadline` (when there is one).
pub fn attach<T>(message: T, deadline: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    request
}

/// The `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_passes_on_the_callers_deadline() {
        let mut incoming = Request::new(());
        incoming
            .metadata_mut()
            .insert("grpc-timeout", "1500m".parse().unwrap());
        let (deadline, ()) = split(incoming);
        assert_eq!(deadline, Some(Duration::from_millis(1500)));
        let outgoing = attach((), deadline);
        assert_eq!(outgoing.metadata().get("grpc-timeout").unwrap(), "1500000u");
        assert_eq!(split(Request::new(())).0, None);
        for bad in ["", "S", "12", "123456789S", "5x"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }
}
