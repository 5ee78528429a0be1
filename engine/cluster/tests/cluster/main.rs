//! The cluster tier: the store against openraft's own suite, then several members in one test
//! process over the in-memory router. Files are numbered by level (`t10_` store, `t20_`
//! replication and app messages, `t30_` authority, `t40_` restarts, `t50_` TLS, `t60_` membership,
//! `t70_` every path and liveness over TLS), each test in linear phases that log why.

mod fixtures;
mod t10_store;
mod t20_replication;
mod t25_messages;
mod t30_authority;
mod t40_restart;
mod t50_tls;
mod t60_membership;
mod t70_paths;
