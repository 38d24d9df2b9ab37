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
