//! The fast path of a cache hit: a fresh stored response sent from `request_filter`, before
//! pingora's cache state machine, through the same response filters as its hit path. The
//! front door (`front`) sends the same hits without a session; both take their body here.

use super::ctx::{Ctx, Decision};
use super::Gateway;
use crate::cache::store::{Body, StoreKey, StoredObject};
use crate::policy::cache::FreshHit;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::Result;
use std::sync::Arc;

impl Gateway {
    /// The body a fresh hit sends: the stored body's compressed form when the client gets an
    /// encoding, made once for the entry (`CompressPolicy::stored_form`) rather than compressed
    /// again for each hit, unless another policy rewrites the body (field selection).
    pub(super) fn hit_body<'h>(&self, ctx: &mut Ctx, obj: &'h Arc<StoredObject>, header: &ResponseHeader, key: &StoreKey) -> &'h Body {
        if let Decision::Routed(route) = &ctx.decision
            && let Some(compress) = route.policies.compress.as_ref()
            && !ctx.record.scratch.fields.selects()
        {
            let (form, made) = compress.stored_form(obj, header, &mut ctx.record.scratch.compress);
            if let Some(encoding) = made {
                self.app.metrics.form_made(encoding);
                if let Some(cache) = route.policies.cache.as_ref() {
                    cache.store.reweigh(key, obj);
                }
            }
            if let Some(form) = form {
                return form;
            }
        }
        &obj.body
    }

    /// Sends a fresh hit the way pingora's hit path would (`proxy_cache_hit`): the route's
    /// response filters on the stored header, then the stored body (or its compressed form)
    /// through the body filters.
    pub(super) async fn serve_fresh_hit(&self, session: &mut Session, ctx: &mut Ctx, hit: FreshHit) -> Result<()> {
        ctx.core.fast_hit = true;
        let FreshHit { header, obj, key } = hit;
        let body = self.hit_body(ctx, &obj, &header, &key);
        let mut header = Box::new(header);
        self.response_filter(session, &mut header, ctx).await?;
        session.write_response_header(header, false).await?;
        for (piece, end) in body.pieces() {
            let mut data = Some(piece);
            self.response_body_filter(session, &mut data, end, ctx)?;
            if end || data.as_ref().is_some_and(|b| !b.is_empty()) {
                session.write_response_body(data, end).await?;
            }
        }
        Ok(())
    }
}
