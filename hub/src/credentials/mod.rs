//! What the hub issues and checks to let a node in: its certificate authority ([`pki`]) and the
//! join handshake with bootstrap tokens ([`join`]).

pub mod join;
pub mod pki;
