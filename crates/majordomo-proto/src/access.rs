//! Who may call and who may serve which services: access rules by the peer's CURVE key.
//!
//! The front end proves each CURVE peer's permanent public key during the handshake (RFC 26's
//! vouch) and tells the broker; the broker asks [`AccessRules::allows`] before it takes a
//! request (calling, `mmi.*` included) or registers a worker (serving). With no rules every peer
//! may do everything, as before; with rules, what no rule allows is refused. A refused request
//! is dropped and counted (`unauthorized`); a refused worker is sent DISCONNECT.
//!
//! ```text
//! rule    = keys call serve
//! keys    = "*" (every peer, with a key or without) | 1*key (32 octets each)
//! pattern = name (that service exactly) | prefix "*" (every service starting with prefix)
//! ```

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// What a peer asks to do with a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Send it requests (a client; `mmi.*` included).
    Call,
    /// Register as one of its workers.
    Serve,
}

/// A service name, or every name starting with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// This service exactly.
    Exact(Bytes),
    /// Every service whose name starts with this.
    Prefix(Bytes),
}

impl Pattern {
    /// `name`, or with a trailing `*` every name starting with what precedes it.
    pub fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(Bytes::copy_from_slice(prefix.as_bytes())),
            None => Pattern::Exact(Bytes::copy_from_slice(text.as_bytes())),
        }
    }

    /// Whether `service` matches.
    pub fn matches(&self, service: &[u8]) -> bool {
        match self {
            Pattern::Exact(name) => name[..] == *service,
            Pattern::Prefix(prefix) => service.starts_with(prefix),
        }
    }
}

/// One rule: which peers, and what they may call and serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRule {
    /// The peers' keys (32 octets each); `None` for every peer.
    pub keys: Option<HashSet<[u8; 32]>>,
    /// Services these peers may call.
    pub call: Vec<Pattern>,
    /// Services these peers may serve.
    pub serve: Vec<Pattern>,
}

impl AccessRule {
    fn applies_to(&self, key: Option<&[u8; 32]>) -> bool {
        match (&self.keys, key) {
            (None, _) => true,
            (Some(keys), Some(key)) => keys.contains(key),
            (Some(_), None) => false,
        }
    }
}

/// A set of [`AccessRule`]s. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    rules: Vec<AccessRule>,
}

impl AccessRules {
    /// Rules that allow what any of `rules` allows, and nothing else.
    pub fn new(rules: Vec<AccessRule>) -> Self {
        Self { rules }
    }

    /// Whether the peer holding `key` (`None`: a peer without one) may `access` `service`.
    pub fn allows(&self, key: Option<&[u8; 32]>, access: Access, service: &[u8]) -> bool {
        self.rules.iter().filter(|r| r.applies_to(key)).any(|rule| {
            let patterns = match access {
                Access::Call => &rule.call,
                Access::Serve => &rule.serve,
            };
            patterns.iter().any(|p| p.matches(service))
        })
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none (and so nothing is allowed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The rules in force, shared between the broker and whoever reloads them: cheap to clone, and a
/// [`SharedAccess::set`] applies to every request and READY after it. `None` (the default):
/// everything is allowed.
#[derive(Debug, Clone, Default)]
pub struct SharedAccess(Arc<RwLock<Option<Arc<AccessRules>>>>);

impl SharedAccess {
    /// Shared `rules` (`None`: everything allowed).
    pub fn new(rules: Option<AccessRules>) -> Self {
        let shared = Self::default();
        shared.set(rules);
        shared
    }

    /// Replaces the rules.
    pub fn set(&self, rules: Option<AccessRules>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = rules.map(Arc::new);
    }

    /// Whether the peer holding `key` may `access` `service` under the rules now in force.
    pub fn allows(&self, key: Option<&[u8; 32]>, access: Access, service: &[u8]) -> bool {
        let rules = self.0.read().unwrap_or_else(|e| e.into_inner());
        rules
            .as_ref()
            .is_none_or(|rules| rules.allows(key, access, service))
    }
}

impl PartialEq for SharedAccess {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedAccess {}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];

    fn rules() -> AccessRules {
        AccessRules::new(vec![
            AccessRule {
                keys: Some(HashSet::from([A])),
                call: vec![Pattern::parse("echo"), Pattern::parse("mmi.*")],
                serve: vec![Pattern::parse("billing.*")],
            },
            AccessRule {
                keys: None,
                call: vec![Pattern::parse("mmi.service")],
                serve: vec![],
            },
        ])
    }

    #[test]
    fn a_rule_allows_its_keys_what_it_lists_and_nothing_else() {
        let rules = rules();
        assert!(rules.allows(Some(&A), Access::Call, b"echo"));
        assert!(rules.allows(Some(&A), Access::Call, b"mmi.stats"));
        assert!(rules.allows(Some(&A), Access::Serve, b"billing.eu"));
        assert!(!rules.allows(Some(&A), Access::Serve, b"echo"));
        assert!(!rules.allows(Some(&A), Access::Call, b"echo2"));
        assert!(!rules.allows(Some(&B), Access::Call, b"echo"));
        assert!(!rules.allows(Some(&B), Access::Call, b"mmi.stats"));
        // "*" rules apply to every peer, keyless ones too.
        assert!(rules.allows(Some(&B), Access::Call, b"mmi.service"));
        assert!(rules.allows(None, Access::Call, b"mmi.service"));
        assert!(!rules.allows(None, Access::Call, b"echo"));
        assert!(!AccessRules::default().allows(Some(&A), Access::Call, b"echo"));
    }

    #[test]
    fn shared_rules_allow_everything_until_set_and_follow_each_set() {
        let shared = SharedAccess::default();
        let seen = shared.clone();
        assert!(seen.allows(Some(&B), Access::Serve, b"anything"));
        shared.set(Some(rules()));
        assert!(!seen.allows(Some(&B), Access::Serve, b"anything"));
        assert!(seen.allows(Some(&A), Access::Call, b"echo"));
        shared.set(None);
        assert!(seen.allows(Some(&B), Access::Serve, b"anything"));
    }
}
