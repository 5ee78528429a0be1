//! Typed names: a node, a group and a resource are each their own type, so passing a group's name
//! where a resource's is expected does not compile.
//!
//! Each wraps an `Arc<str>`: cloning one (the core does it on every command and map insert) is a
//! reference count, not an allocation. They serialise as the plain string, so the persisted state
//! and the control protocol are unchanged, and they borrow as `str`, so a map keyed by them can be
//! looked up with a `&str`.
//!
//! ```
//! # use warden_core::scheduler::{Model, Scheduler};
//! # use warden_core::ResourceId;
//! let s = Scheduler::new(Model { nodes: vec![], groups: Default::default(), resources: Default::default() });
//! assert_eq!(s.epoch(&ResourceId::from("app")), 0);
//! ```
//! A group's name where a resource's is expected does not compile:
//! ```compile_fail
//! # use warden_core::scheduler::{Model, Scheduler};
//! # use warden_core::GroupId;
//! let s = Scheduler::new(Model { nodes: vec![], groups: Default::default(), resources: Default::default() });
//! s.epoch(&GroupId::from("g"));
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(name: impl Into<Arc<str>>) -> Self {
                Self(name.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// As the bare string, so that test failures and logs read as before.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.into())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s.into())
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                Self(s.as_str().into())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &*self.0 == other.as_str()
            }
        }

        // By hand rather than `#[serde(transparent)]` over `Arc<str>`, which would need serde's
        // `rc` feature: the same plain string either way.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self::from)
            }
        }
    };
}

name_id! {
    /// A node's name (`[[nodes]] name`).
    NodeId
}

name_id! {
    /// A group's name (`[[groups]] name`).
    GroupId
}

name_id! {
    /// A resource's name (`[[resources]] name`).
    ResourceId
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn ids_serialise_as_plain_strings() {
        let n = NodeId::from("alpha");
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""alpha""#);
        assert_eq!(serde_json::from_str::<NodeId>(r#""alpha""#).unwrap(), n);
        let m: BTreeMap<ResourceId, BTreeMap<NodeId, u32>> = [(ResourceId::from("ip"), [(NodeId::from("a"), 1)].into())].into();
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"ip":{"a":1}}"#);
    }

    #[test]
    fn maps_keyed_by_ids_are_looked_up_by_str() {
        let m: BTreeMap<GroupId, u32> = [(GroupId::from("g"), 7)].into();
        assert_eq!(m.get("g"), Some(&7));
        assert_eq!(m["g"], 7);
        assert_eq!(GroupId::from("g").to_string(), "g");
        assert_eq!(format!("{:?}", GroupId::from("g")), r#""g""#);
    }
}
