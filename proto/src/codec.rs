//! The gRPC codec of every pivot service: prost, except that a message that does not decode
//! is answered with `InvalidArgument` rather than tonic's default `Internal`.
//!
//! gRPC's status-code guide files parse errors under INTERNAL, but for pivot a truncated or
//! hostile message is the caller's fault, and the caller (an agent, a script) should be told so:
//! the status names the message type and prost's description, which names the field
//! (e.g. `failed to decode Protobuf message: Intent.device_id: invalid string value`).

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Prost encoding; decoding errors become `InvalidArgument`.
#[derive(Debug, Clone)]
pub struct PivotCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for PivotCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for PivotCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder {
            inner: self.inner.decoder(),
            _pd: PhantomData,
        }
    }
}

/// Decodes with prost and reports failures as `InvalidArgument` naming the message type.
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U> {
    inner: ProstDecoder<U>,
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|s| {
            let name = std::any::type_name::<U>()
                .rsplit("::")
                .next()
                .unwrap_or("message");
            Status::invalid_argument(format!("malformed {name} message: {}", s.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
