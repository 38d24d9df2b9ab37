//! A gRPC codec that sends answers already encoded: the bytes of a
//! protobuf message, written as they are. A service that holds its
//! answers encoded (imaged-metadata's ListImages, the event log's events)
//! serves them through it without decoding and re-encoding; the client
//! sees the ordinary message. Requests are decoded as usual.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// Writes bytes that are already an encoded message.
#[derive(Debug, Default)]
pub struct PassEncoder;

impl Encoder for PassEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// Decodes requests of type `Req`, passes encoded answers through.
#[derive(Debug)]
pub struct PassCodec<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for PassCodec<Req> {
    fn default() -> Self {
        PassCodec(PhantomData)
    }
}

impl<Req: prost::Message + Default + Send + 'static> Codec for PassCodec<Req> {
    type Encode = Bytes;
    type Decode = Req;
    type Encoder = PassEncoder;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> PassEncoder {
        PassEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<Req> {
        ProstDecoder::default()
    }
}

/// Reads answers as their encoded bytes, unparsed, for a relay that
/// passes them on.
#[derive(Debug, Default)]
pub struct PassDecoder;

impl tonic::codec::Decoder for PassDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A client's codec for relaying: encodes requests of type `Req`, reads
/// answers as bytes (served on with [`PassCodec`]).
#[derive(Debug)]
pub struct RelayCodec<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for RelayCodec<Req> {
    fn default() -> Self {
        RelayCodec(PhantomData)
    }
}

impl<Req: prost::Message + Send + 'static> Codec for RelayCodec<Req> {
    type Encode = Req;
    type Decode = Bytes;
    type Encoder = tonic_prost::ProstEncoder<Req>;
    type Decoder = PassDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> PassDecoder {
        PassDecoder
    }
}

/// What serves one method in place of the generated server.
pub type Handler = std::sync::Arc<
    dyn Fn(
            http::Request<tonic::body::Body>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = http::Response<tonic::body::Body>> + Send>,
        > + Send
        + Sync,
>;

/// A generated gRPC server `S` with the method at `path` served by
/// `handler` instead (with [`PassCodec`], typically); every other method
/// goes to `S`.
#[derive(Clone)]
pub struct Override<S> {
    inner: S,
    path: &'static str,
    handler: Handler,
}

impl<S> Override<S> {
    pub fn new(inner: S, path: &'static str, handler: Handler) -> Self {
        Override {
            inner,
            path,
            handler,
        }
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Override<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == self.path {
            let answer = (self.handler)(request);
            Box::pin(async move { Ok(answer.await) })
        } else {
            let mut inner = self.inner.clone();
            Box::pin(async move { inner.call(request).await })
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Override<S> {
    const NAME: &'static str = S::NAME;
}
