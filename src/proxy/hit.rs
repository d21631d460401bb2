//! The fast path of a cache hit: a fresh stored response sent from `request_filter`, before
//! pingora's cache state machine, through the same response filters as its hit path.

use super::ctx::{Ctx, Decision};
use super::Gateway;
use pingora::proxy::{ProxyHttp, Session};
use pingora::Result;

impl Gateway {
    /// Sends a fresh hit the way pingora's hit path would (`proxy_cache_hit`): the route's
    /// response filters on the stored header, the engine's modules (compression), then the
    /// stored body through the body filters.
    ///
    /// A client that gets an encoding is sent the stored body's compressed form, made once for
    /// the entry (`CompressPolicy::stored_form`) rather than compressed again for each hit,
    /// unless another policy rewrites the body (field selection).
    pub(super) async fn serve_fresh_hit(&self, session: &mut Session, ctx: &mut Ctx, hit: crate::policy::cache::FreshHit) -> Result<()> {
        ctx.core.fast_hit = true;
        let mut form = None;
        if let Decision::Routed(route) = &ctx.decision
            && let Some(compress) = route.policies.compress.as_ref()
            && !ctx.record.scratch.fields.selects()
        {
            let (made, grew) = compress.stored_form(&hit.obj, &hit.header, &mut ctx.record.scratch.compress);
            if let (true, Some(cache)) = (grew, route.policies.cache.as_ref()) {
                cache.store.reweigh(&hit.key, &hit.obj);
            }
            form = made;
        }
        let mut header = Box::new(hit.header);
        self.response_filter(session, &mut header, ctx).await?;
        session.write_response_header(header, false).await?;
        let body = form.unwrap_or(&hit.obj.body);
        let len = body.len();
        let mut pos = 0;
        loop {
            let chunk = body.chunk_at(pos, len);
            pos += chunk.len();
            let end = pos >= len;
            let mut data = Some(chunk);
            self.response_body_filter(session, &mut data, end, ctx)?;
            if end || data.as_ref().is_some_and(|b| !b.is_empty()) {
                session.write_response_body(data, end).await?;
            }
            if end {
                return Ok(());
            }
        }
    }
}

