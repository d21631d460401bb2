//! What several policies share that is no policy itself: query strings read as the backend
//! reads them, and response bodies gathered whole for the policies that rewrite them.

pub mod gather;
pub mod query;
