//! A refused or failed web call: the HTTP status the gRPC code maps to, and the same message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered as `{"error": message, "code": grpc code}`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebError {
    pub status: StatusCode,
    pub code: tonic::Code,
    pub message: String,
}

impl WebError {
    /// A request the web layer itself refuses (a malformed body, a missing header).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: tonic::Code::InvalidArgument,
            message: message.into(),
        }
    }
}

/// The HTTP status a browser or script expects for a gRPC code.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<tonic::Status> for WebError {
    fn from(s: tonic::Status) -> Self {
        Self {
            status: http_status(s.code()),
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({
                "error": self.message,
                "code": format!("{:?}", self.code),
            })),
        )
            .into_response()
    }
}
