//! `--access-rules FILE`: who may call and serve which services, by CURVE key, in TOML.
//!
//! ```toml
//! # Every peer may ask whether a service exists.
//! [[rule]]
//! keys = ["*"]
//! call = ["mmi.service"]
//!
//! # The billing front ends may call billing services; the billing workers may serve them.
//! [[rule]]
//! keys = ["rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"]
//! call = ["billing.*", "mmi.*"]
//! serve = ["billing.*"]
//! ```
//!
//! `keys` are Z85 public keys (`majordomo keygen` prints one) or `"*"` for every peer; a pattern
//! ending in `*` is a prefix. What no rule allows is refused. Reloaded on SIGHUP: a file that
//! does not read leaves the rules in force as they were.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use majordomo_broker::{AccessRule, AccessRules, CurvePublicKey, Pattern, SharedAccess};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<RuleText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    keys: Vec<String>,
    #[serde(default)]
    call: Vec<String>,
    #[serde(default)]
    serve: Vec<String>,
}

/// Reads the rules in `path`.
pub(crate) fn load(path: &Path) -> Result<AccessRules> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let file: File = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let mut rules = Vec::new();
    for (n, rule) in file.rule.into_iter().enumerate() {
        let context = || format!("{}: rule {}", path.display(), n + 1);
        if rule.keys.is_empty() {
            bail!("{}: `keys` is empty (\"*\" for every peer)", context());
        }
        let keys = if rule.keys.iter().any(|k| k == "*") {
            None
        } else {
            let mut keys = HashSet::new();
            for key in &rule.keys {
                let key = CurvePublicKey::from_z85(key).with_context(context)?;
                keys.insert(*key.as_bytes());
            }
            Some(keys)
        };
        let patterns = |names: &[String]| names.iter().map(|n| Pattern::parse(n)).collect();
        rules.push(AccessRule {
            keys,
            call: patterns(&rule.call),
            serve: patterns(&rule.serve),
        });
    }
    Ok(AccessRules::new(rules))
}

/// The rules of `path`, shared with the broker and reloaded on SIGHUP.
pub(crate) fn shared(path: PathBuf) -> Result<SharedAccess> {
    let rules = load(&path)?;
    tracing::info!(rules = rules.len(), path = %path.display(), "access rules in force");
    let shared = SharedAccess::new(Some(rules));
    let reloaded = shared.clone();
    crate::signals::on_reload(move || {
        let rules = load(&path)?;
        tracing::info!(rules = rules.len(), path = %path.display(), "access rules reloaded");
        reloaded.set(Some(rules));
        Ok(())
    });
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use majordomo_broker::{Access, CurveKeyPair};

    #[test]
    fn rules_are_read_from_toml_and_bad_ones_name_their_rule() {
        let dir = std::env::temp_dir().join(format!("majordomo-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.toml");
        let key = CurveKeyPair::generate().public();
        std::fs::write(
            &path,
            format!(
                "[[rule]]\nkeys = [\"*\"]\ncall = [\"mmi.service\"]\n\n\
                 [[rule]]\nkeys = [\"{key}\"]\ncall = [\"billing.*\"]\nserve = [\"echo\"]\n"
            ),
        )
        .unwrap();
        let rules = load(&path).unwrap();
        let key = *key.as_bytes();
        assert!(rules.allows(Some(&key), Access::Call, b"billing.eu"));
        assert!(rules.allows(Some(&key), Access::Serve, b"echo"));
        assert!(rules.allows(None, Access::Call, b"mmi.service"));
        assert!(!rules.allows(None, Access::Call, b"billing.eu"));

        std::fs::write(&path, "[[rule]]\nkeys = [\"not a key\"]\n").unwrap();
        let error = format!("{:#}", load(&path).unwrap_err());
        assert!(error.contains("rule 1"), "{error}");
        std::fs::write(&path, "[[rule]]\nkeys = [\"*\"]\ncal = [\"x\"]\n").unwrap();
        assert!(load(&path).is_err(), "a misspelt field is refused");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
