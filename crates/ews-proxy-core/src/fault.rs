//! SOAP faults for the errors the gateway itself produces.
//!
//! An EWS client (ENS, a mail app, exchangelib, EWS Managed API) parses every non-2xx answer from
//! `/EWS/Exchange.asmx` as a SOAP 1.1 `Fault` whose `detail` carries an EWS `ResponseCode`, the
//! shape Exchange itself uses for errors outside a `ResponseMessage` (e.g. schema validation). The
//! gateway's own errors use the same shape, and add an `X-Seg-Fault` header naming the cause, so
//! a client can tell them from Exchange's.
//!
//! ```
//! use ews_proxy_core::fault::{FaultCode, SoapFault};
//! use http::StatusCode;
//! use http_body_util::Full;
//! use bytes::Bytes;
//!
//! let response: http::Response<Full<Bytes>> =
//!     SoapFault::new(StatusCode::BAD_GATEWAY, FaultCode::ConnectionFailed, "exchange is unreachable")
//!         .with_reason("upstream-unreachable")
//!         .into_response();
//! assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
//! assert_eq!(response.headers()["x-seg-fault"], "upstream-unreachable");
//! assert_eq!(response.headers()["content-type"], "text/xml; charset=utf-8");
//! ```

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Name of the header that carries the machine-readable cause of a fault made by the gateway.
pub const SEG_FAULT_HEADER: &str = "x-seg-fault";

/// The EWS `ResponseCode` values the gateway uses in its own faults.
///
/// They are values of the EWS schema's `ResponseCodeType`, so a client that maps response codes to
/// errors (ENS does, to decide between retrying and giving up) needs no new case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultCode {
    /// `ErrorConnectionFailed`: Exchange could not be reached (connection or TLS failure).
    ConnectionFailed,
    /// `ErrorTimeoutExpired`: Exchange did not answer in time.
    TimeoutExpired,
    /// `ErrorInvalidRequest`: the request is not one the gateway can forward (e.g. too large).
    InvalidRequest,
    /// `ErrorSchemaValidation`: the body is not an EWS SOAP request.
    SchemaValidation,
    /// `ErrorAccessDenied`: the gateway refuses the request (compliance, authentication).
    AccessDenied,
    /// `ErrorServerBusy`: the gateway is at a limit or shutting down.
    ServerBusy,
    /// `ErrorInternalServerError`: anything else that went wrong inside the gateway.
    InternalServerError,
}

impl FaultCode {
    /// The `ResponseCode` text, as in the EWS schema.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultCode::ConnectionFailed => "ErrorConnectionFailed",
            FaultCode::TimeoutExpired => "ErrorTimeoutExpired",
            FaultCode::InvalidRequest => "ErrorInvalidRequest",
            FaultCode::SchemaValidation => "ErrorSchemaValidation",
            FaultCode::AccessDenied => "ErrorAccessDenied",
            FaultCode::ServerBusy => "ErrorServerBusy",
            FaultCode::InternalServerError => "ErrorInternalServerError",
        }
    }
}

/// A SOAP 1.1 fault response made by the gateway.
#[derive(Clone, Debug)]
pub struct SoapFault {
    status: StatusCode,
    code: FaultCode,
    message: String,
    reason: Option<HeaderValue>,
}

impl SoapFault {
    /// A fault with an HTTP status, an EWS response code and a human-readable message.
    ///
    /// The message is shown to EWS clients and written to logs: never put a secret in it.
    pub fn new(status: StatusCode, code: FaultCode, message: impl Into<String>) -> Self {
        SoapFault {
            status,
            code,
            message: message.into(),
            reason: None,
        }
    }

    /// Sets the machine-readable cause sent in the `X-Seg-Fault` header.
    ///
    /// A value that is not a valid header value is replaced by `invalid-reason` rather than
    /// dropped, so a fault never loses its marker.
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = Some(
            HeaderValue::from_str(reason)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid-reason")),
        );
        self
    }

    /// The HTTP status of the fault.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The EWS response code of the fault.
    pub fn code(&self) -> FaultCode {
        self.code
    }

    /// The human-readable message of the fault.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The XML document of the fault.
    pub fn to_xml(&self) -> String {
        let code = self.code.as_str();
        let message = escape_xml(&self.message);
        format!(
            concat!(
                r#"<?xml version="1.0" encoding="utf-8"?>"#,
                r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>"#,
                r#"<faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:{code}</faultcode>"#,
                r#"<faultstring xml:lang="en-US">{message}</faultstring>"#,
                r#"<detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{code}</e:ResponseCode>"#,
                r#"<e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{message}</e:Message></detail>"#,
                r#"</s:Fault></s:Body></s:Envelope>"#
            ),
            code = code,
            message = message
        )
    }

    /// Builds the response; any body type that can be made from [`Bytes`] will do.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let body = Bytes::from(self.to_xml());
        let mut response = Response::new(B::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        if let Some(reason) = self.reason {
            headers.insert(SEG_FAULT_HEADER, reason);
        }
        response
    }
}

/// Escapes the five XML special characters of a text node or attribute value.
pub(crate) fn escape_xml(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn fault_body_is_soap_with_escaped_message() {
        let response: Response<Full<Bytes>> = SoapFault::new(
            StatusCode::GATEWAY_TIMEOUT,
            FaultCode::TimeoutExpired,
            "a < b & c",
        )
        .into_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.headers().get(SEG_FAULT_HEADER).is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("<faultcode xmlns:a=\"http://schemas.microsoft.com/exchange/services/2006/types\">a:ErrorTimeoutExpired</faultcode>"));
        assert!(text.contains("<faultstring xml:lang=\"en-US\">a &lt; b &amp; c</faultstring>"));
        assert!(text.contains(">ErrorTimeoutExpired</e:ResponseCode>"));
    }

    #[test]
    fn invalid_reason_is_replaced_not_dropped() {
        let response: Response<Full<Bytes>> =
            SoapFault::new(StatusCode::FORBIDDEN, FaultCode::AccessDenied, "no")
                .with_reason("bad\nvalue")
                .into_response();
        assert_eq!(response.headers()[SEG_FAULT_HEADER], "invalid-reason");
    }
}
