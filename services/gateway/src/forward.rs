//! The one way the gateway forwards a call: the caller's message and
//! deadline to the same-named method of an internal service, retried while
//! that service cannot be reached (see `Peer::call`).

/// Calls `$method` of the service behind `$peer` through the generated
/// `$client` with `$request`'s message and deadline; evaluates to the
/// answer, or returns the error status from the enclosing handler.
macro_rules! forward {
    ($peer:expr, $client:ident, $request:ident, $method:ident) => {{
        let (deadline, request) = imaged_common::deadline::split($request);
        $peer
            .rpc(|mut client: $client| {
                let request = request.clone();
                async move {
                    client
                        .$method(imaged_common::deadline::attach(request, deadline))
                        .await
                }
            })
            .await?
    }};
}

pub(crate) use forward;
