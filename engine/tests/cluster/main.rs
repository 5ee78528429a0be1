//! Cluster tier: real `warden node run` members (two nodes and a witness) in network namespaces,
//! over two paths with mutual TLS, cut with iptables; a sampler checks that no service ever runs
//! on two members at once.

#[path = "../support/cluster.rs"]
mod cluster;
#[path = "../support/netns.rs"]
mod netns;
#[path = "../support/node.rs"]
mod node;

mod members;
