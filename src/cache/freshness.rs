//! RFC 9111 freshness arithmetic for a shared cache: which cache-control field speaks
//! (targeted fields first, RFC 9213), the explicit freshness lifetime (4.2.1), heuristic
//! freshness (4.2.2) and the response's age when it arrived (4.2.3).

use http::header::{HeaderName, AGE, DATE, EXPIRES, LAST_MODIFIED, VARY};
use pingora::cache::cache_control::CacheControl;
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// `CDN-Cache-Control` (RFC 9213): honoured by every route, after the route's own field.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The cache-control that applies to this cache: the first targeted field present (the
/// route's own, then `CDN-Cache-Control`), else `Cache-Control`. A targeted field replaces
/// `Cache-Control` entirely (RFC 9213 2.1).
pub fn cache_control(resp: &ResponseHeader, targeted: Option<&HeaderName>) -> Option<CacheControl> {
    for name in targeted.into_iter().chain(std::iter::once(&CDN_CACHE_CONTROL)) {
        if resp.headers.contains_key(name)
            && let Some(cc) = CacheControl::from_headers_named(name.as_str(), &resp.headers)
        {
            return Some(cc);
        }
    }
    CacheControl::from_resp_headers(resp)
}

pub fn http_date(v: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

/// The explicit freshness lifetime: `s-maxage`, then `max-age`, then `Expires` - `Date`.
/// An invalid or repeated `Expires` means "already expired" (5.3).
pub fn explicit_lifetime(cc: Option<&CacheControl>, resp: &ResponseHeader, response_time: SystemTime) -> Option<Duration> {
    if let Some(cc) = cc {
        if let Ok(Some(s)) = cc.s_maxage() {
            return Some(Duration::from_secs(s.into()));
        }
        if let Ok(Some(s)) = cc.max_age() {
            return Some(Duration::from_secs(s.into()));
        }
    }
    let mut expires = resp.headers.get_all(EXPIRES).iter();
    let first = expires.next()?;
    let Some(exp) = http_date(first).filter(|_| expires.next().is_none()) else {
        return Some(Duration::ZERO);
    };
    let date = resp.headers.get(DATE).and_then(http_date).unwrap_or(response_time);
    Some(exp.duration_since(date).unwrap_or(Duration::ZERO))
}

/// Statuses RFC 9110 15.1 defines as heuristically cacheable.
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// 10% of the time since `Last-Modified` (the RFC's suggestion), at most a day.
pub fn last_modified_heuristic(resp: &ResponseHeader, response_time: SystemTime) -> Option<Duration> {
    let lm = resp.headers.get(LAST_MODIFIED).and_then(http_date)?;
    let date = resp.headers.get(DATE).and_then(http_date).unwrap_or(response_time);
    let since = date.duration_since(lm).ok()?;
    Some((since / 10).min(Duration::from_secs(86_400)))
}

/// The age the response had when it arrived (`corrected_initial_age`, 4.2.3), in whole
/// seconds. `Date` has one-second resolution, so the apparent age it gives has a second of
/// slack that is not counted (counted, it would cut a `max-age=1` to a few milliseconds).
pub fn initial_age(resp: &ResponseHeader, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let age_value = resp
        .headers
        .get(AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = resp
        .headers
        .get(DATE)
        .and_then(http_date)
        .and_then(|d| response_time.duration_since(d).ok())
        .map_or(Duration::ZERO, |a| Duration::from_secs(a.as_secs().saturating_sub(1)));
    let delay = response_time.duration_since(request_time).unwrap_or(Duration::ZERO);
    let corrected = age_value + delay;
    apparent.max(if age_value.is_zero() { Duration::ZERO } else { Duration::from_secs(corrected.as_secs()) })
}

/// A `Vary` that names `*`, alone or in a list: no request can ever match it.
pub fn vary_star(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(VARY)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii() == b"*"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn expires_counts_from_the_date_field() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let date = httpdate::fmt_http_date(now - Duration::from_secs(100));
        let exp = httpdate::fmt_http_date(now - Duration::from_secs(40));
        // 60 s of lifetime from the origin's clock, though the local clock says it expired
        let r = resp(&[("date", &date), ("expires", &exp)]);
        assert_eq!(explicit_lifetime(None, &r, now), Some(Duration::from_secs(60)));
        assert_eq!(explicit_lifetime(None, &resp(&[("expires", "garbage")]), now), Some(Duration::ZERO));
        assert_eq!(explicit_lifetime(None, &resp(&[]), now), None);
    }

    #[test]
    fn age_is_the_larger_of_apparent_and_received() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let date = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(initial_age(&resp(&[("age", "50"), ("date", &date)]), now, now), Duration::from_secs(50));
        assert_eq!(initial_age(&resp(&[("age", "10"), ("date", &date)]), now, now), Duration::from_secs(29));
        assert_eq!(initial_age(&resp(&[]), now, now), Duration::ZERO);
    }

    #[test]
    fn vary_star_anywhere_and_targeted_fields() {
        assert!(vary_star(&resp(&[("vary", "Accept, *")])));
        assert!(vary_star(&resp(&[("vary", "accept"), ("vary", "*")])));
        assert!(!vary_star(&resp(&[("vary", "accept")])));
        let r = resp(&[("cache-control", "max-age=5"), ("cdn-cache-control", "max-age=50"), ("fastgate-cache-control", "no-store")]);
        let cc = cache_control(&r, None).unwrap();
        assert_eq!(cc.max_age().unwrap(), Some(50));
        let own = HeaderName::from_static("fastgate-cache-control");
        assert!(cache_control(&r, Some(&own)).unwrap().no_store());
    }
}
