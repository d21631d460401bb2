//! Writes the gateway's own responses on the proxy listener: every refusal and failure goes
//! through here, rendered by `problem`, carrying the route's `RateLimit` fields and recorded
//! in the request's outcome.

use super::ctx::Ctx;
use crate::problem::{self, GatewayError};
use pingora::proxy::Session;
use pingora::Result;

/// Sends `err` as problem+json (header only for HEAD) and notes it in the outcome.
pub async fn respond(session: &mut Session, ctx: &mut Ctx, err: GatewayError) -> Result<()> {
    let (header, body) = problem_response(ctx, err);
    if session.is_process_shutting_down() {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(header), head_only).await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// `err` rendered with the route's fields and noted in the outcome: what `respond` sends, and
/// what the front door writes itself.
pub fn problem_response(ctx: &mut Ctx, err: GatewayError) -> (pingora::http::ResponseHeader, bytes::Bytes) {
    let (mut header, body) = problem::render(&err, &ctx.core.request_id);
    if let Some(route) = ctx.route() {
        route.policies.decorate(&mut header, &ctx.record.scratch);
    }
    note(ctx, err);
    (header, body)
}

/// Records a problem the client sees (or that cut the response short) in the outcome.
pub fn note(ctx: &mut Ctx, err: GatewayError) {
    ctx.record.outcome.problem = Some(err.problem.code());
    ctx.record.outcome.problem_detail = Some(err.detail);
}
