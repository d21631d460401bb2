//! `hsts`: `Strict-Transport-Security` on responses to requests that came over HTTPS. Never on
//! plain HTTP (RFC 6797 8.1: a browser ignores it there, and an attacker could forge it).

use super::{Directives, Exchange, Policy};
use crate::problem::GatewayError;
use http::HeaderValue;
use pingora::http::ResponseHeader;

#[derive(Debug, Clone)]
pub struct Hsts {
    value: HeaderValue,
}

impl Hsts {
    /// `None` for a value that is not a header value (the compiler builds only valid ones).
    pub fn new(value: &str) -> Option<Self> {
        HeaderValue::from_str(value).ok().map(|value| Hsts { value })
    }
}

impl Policy for Hsts {
    type State = ();

    async fn on_response(&self, x: &Exchange<'_>, resp: &mut ResponseHeader, _st: &mut (), _d: &mut Directives) -> Result<(), GatewayError> {
        if x.tls {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, self.value.clone())
                .map_err(|e| GatewayError::new(crate::problem::Problem::Internal, format!("hsts: {e}")))?;
        }
        Ok(())
    }
}
