//! Shared vocabulary of the static model: node roles, switchback policy and dependency order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    #[default]
    Node,
    Witness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Switchback {
    /// Stay where the group is (LifeKeeper's default).
    #[default]
    Intelligent,
    /// Return to the highest-priority node when it comes back.
    Automatic,
}

/// Members in a start order (every resource after what it depends on), or the cycle found.
/// Generic over the name type: the config checks its own strings, the model orders resource ids.
pub fn topo_order<T: Ord + Clone>(members: &[T], edges: &BTreeMap<T, Vec<T>>) -> Result<Vec<T>, Vec<T>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit<T: Ord + Clone>(
        n: &T,
        edges: &BTreeMap<T, Vec<T>>,
        marks: &mut BTreeMap<T, Mark>,
        stack: &mut Vec<T>,
        out: &mut Vec<T>,
    ) -> Result<(), Vec<T>> {
        match marks.get(n).copied().unwrap_or(Mark::New) {
            Mark::Done => return Ok(()),
            Mark::Active => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.clone());
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks.insert(n.clone(), Mark::Active);
        stack.push(n.clone());
        for d in edges.get(n).into_iter().flatten() {
            visit(d, edges, marks, stack, out)?;
        }
        stack.pop();
        marks.insert(n.clone(), Mark::Done);
        out.push(n.clone());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for m in members {
        visit(m, edges, &mut marks, &mut Vec::new(), &mut out)?;
    }
    out.retain(|x| members.contains(x));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_order_respects_edges_and_finds_cycles() {
        let m: Vec<String> = ["ajs", "base", "vip", "fs"].iter().map(|s| s.to_string()).collect();
        let mut e = BTreeMap::new();
        e.insert("base".to_string(), vec!["vip".to_string(), "fs".to_string()]);
        e.insert("ajs".to_string(), vec!["base".to_string()]);
        let order = topo_order(&m, &e).unwrap();
        let pos = |x: &str| order.iter().position(|o| o == x).unwrap();
        assert!(pos("vip") < pos("base") && pos("fs") < pos("base") && pos("base") < pos("ajs"));
        e.insert("vip".to_string(), vec!["ajs".to_string()]);
        let cycle = topo_order(&m, &e).unwrap_err();
        assert_eq!(cycle.first(), cycle.last());
        assert!(cycle.len() >= 4, "{cycle:?}");
    }
}
