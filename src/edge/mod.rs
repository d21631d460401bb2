//! What every request gets from the server, before and beside its route: the head and
//! connection limits checked before routing (`limits`), and the forwarding fields, request ids
//! and hop-by-hop removal on the way to the backend (`forwarding`).

pub mod forwarding;
pub mod limits;
