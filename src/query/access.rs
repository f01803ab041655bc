//! Who may query: the `[sql]` tokens, one table for `POST /sql` and PostgreSQL alike.
//!
//! Owns how a caller is found: by the secret presented, compared in constant time with
//! every token. `POST /sql` finds its caller on each request; a PostgreSQL session finds it
//! once, at sign-in, and keeps that caller for its life. Neither door ever looks a caller
//! up by name: two tokens can share a name's PostgreSQL user, never a secret. It must never
//! keep or log a secret in clear.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Visibility;
use crate::config::{POSTGRES_USER_OF_SQL_TOKEN, SQL_TABLE_TOKEN, Sql};
use crate::secret::SecretDigest;

/// A token's holder.
#[derive(Debug)]
pub struct Caller {
    /// The token's name in logs and metrics: `sql` for the `[sql]` table's own token.
    name: String,
    /// The user name PostgreSQL clients sign in with.
    user: String,
    digest: SecretDigest,
    /// `None` sees every institution.
    institutions: Option<BTreeSet<String>>,
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn visibility(&self) -> Visibility<'_> {
        match &self.institutions {
            None => Visibility::All,
            Some(codes) => Visibility::Only(codes),
        }
    }
}

/// Every token of `[sql]`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Callers(Arc<Vec<Arc<Caller>>>);

impl Callers {
    pub fn new(sql: &Sql) -> Callers {
        Callers(Arc::new(
            sql.tokens
                .iter()
                .map(|token| {
                    let user = match token.name.as_str() {
                        SQL_TABLE_TOKEN => POSTGRES_USER_OF_SQL_TOKEN.to_string(),
                        name => name.to_string(),
                    };
                    Arc::new(Caller {
                        name: token.name.clone(),
                        user,
                        digest: SecretDigest::of(token.token.as_bytes()),
                        institutions: token.institutions.clone(),
                    })
                })
                .collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller whose token is `secret`. Every token is compared, so the time taken tells
    /// nothing about which one matched, or whether one did.
    pub fn by_secret(&self, secret: &[u8]) -> Option<Arc<Caller>> {
        self.0
            .iter()
            .fold(None, |found, caller| match caller.digest.matches(secret) {
                true => Some(caller.clone()),
                false => found,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqlToken;

    fn sql(tokens: &[(&str, &str, Option<&[&str]>)]) -> Sql {
        let config = crate::config::Config::parse("", "t".as_ref(), "/".as_ref(), &|_| None)
            .expect("the defaults load");
        Sql {
            tokens: tokens
                .iter()
                .map(|(name, token, institutions)| SqlToken {
                    name: name.to_string(),
                    token: token.to_string(),
                    institutions: institutions
                        .map(|codes| codes.iter().map(|c| c.to_string()).collect()),
                })
                .collect(),
            ..config.sql
        }
    }

    #[test]
    fn a_caller_is_found_by_its_secret_never_by_its_name() {
        let callers = Callers::new(&sql(&[
            ("sql", "every-venue", None),
            ("alpha_analyst", "alpha-only", Some(&["alpha"])),
        ]));
        let every = callers.by_secret(b"every-venue").unwrap();
        assert_eq!((every.name(), every.user()), ("sql", "datx"));
        assert!(matches!(every.visibility(), Visibility::All));
        let alpha = callers.by_secret(b"alpha-only").unwrap();
        assert_eq!(alpha.user(), "alpha_analyst");
        assert!(matches!(alpha.visibility(), Visibility::Only(codes) if codes.len() == 1));
        assert!(callers.by_secret(b"alpha_analyst").is_none());
        assert!(callers.by_secret(b"").is_none());
    }
}
