//! Signing in: the user name is a `[sql]` token's name (`datx` for the `[sql]` table's own
//! token) and the password is the token, compared in constant time.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{ClientInfo, ConnectionManager, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::Activity;

use crate::config::{POSTGRES_USER_OF_SQL_TOKEN, Sql};
use crate::query::Visibility;
use crate::query::pg_catalog;
use crate::secret::SecretDigest;

/// A token's holder, as a PostgreSQL user.
#[derive(Debug)]
pub struct Caller {
    user: String,
    /// The token's name in the logs and metrics, as for `POST /sql`.
    name: String,
    digest: SecretDigest,
    institutions: Option<BTreeSet<String>>,
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PostgreSQL user name the client signed in with.
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

/// Cheap to clone: the sign-in handler of every connection holds one.
#[derive(Debug, Clone)]
pub struct Callers(Arc<Vec<Caller>>);

impl Callers {
    pub fn new(sql: &Sql) -> Callers {
        Callers(Arc::new(
            sql.tokens
                .iter()
                .map(|token| Caller {
                    user: match token.name.as_str() {
                        "sql" => POSTGRES_USER_OF_SQL_TOKEN.to_string(),
                        name => name.to_string(),
                    },
                    name: token.name.clone(),
                    digest: SecretDigest::of(token.token.as_bytes()),
                    institutions: token.institutions.clone(),
                })
                .collect(),
        ))
    }

    pub fn named(&self, user: &str) -> Option<&Caller> {
        self.0.iter().find(|caller| caller.user == user)
    }
}

#[async_trait]
impl AuthSource for Callers {
    /// Never asked: `verify_password` below compares digests instead of passwords.
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(refused(login))
    }

    /// Every token is compared, whichever user is named, so that the time taken tells
    /// nothing about which users exist.
    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default();
        let signed_in = self.0.iter().fold(false, |found, caller| {
            let matches = caller.digest.matches(presented);
            found | (matches && caller.user == user)
        });
        match signed_in {
            true => {
                tracing::info!(user, host = login.host(), "PostgreSQL client signed in");
                Ok(None)
            }
            false => {
                tracing::warn!(user, host = login.host(), "PostgreSQL sign-in refused");
                crate::metrics::postgres_sign_in_refused();
                Err(refused(login))
            }
        }
    }
}

/// A refusal that ends the connection (FATAL 28P01), as PostgreSQL's own.
fn refused(login: &LoginInfo) -> PgWireError {
    PgWireError::InvalidPassword(login.user().unwrap_or_default().to_string())
}

type PasswordSignIn = CleartextPasswordAuthStartupHandler<Callers, DefaultServerParameterProvider>;

/// One connection's sign-in: refuses a client without TLS where a certificate is
/// configured, before it sends its password, and tells the session's watchdog once the
/// client is in (until then it is held to the sign-in deadline).
pub struct SignIn {
    password: PasswordSignIn,
    tls_required: bool,
    activity: Arc<Activity>,
}

impl SignIn {
    pub fn new(
        callers: Callers,
        connections: Arc<ConnectionManager>,
        tls_required: bool,
        activity: Arc<Activity>,
    ) -> SignIn {
        SignIn {
            password: password_handler(callers, connections),
            tls_required,
            activity,
        }
    }
}

#[async_trait]
impl StartupHandler for SignIn {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.tls_required && !client.is_secure() {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "this server accepts TLS connections only (postgres.tls_cert is set): connect with sslmode=require".into(),
            ))));
        }
        self.password.on_startup(client, message).await?;
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            self.activity.signed_in();
        }
        Ok(())
    }
}

/// Asks for the password in clear text (TLS protects it where configured), and tells the
/// client what server it reached.
fn password_handler(callers: Callers, connections: Arc<ConnectionManager>) -> PasswordSignIn {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = format!(
        "{} (datx {})",
        pg_catalog::SERVER_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    parameters.is_superuser = false;
    parameters.default_transaction_read_only = true;
    parameters.time_zone = "UTC".into();
    CleartextPasswordAuthStartupHandler::new(callers, parameters)
        .with_connection_manager(connections)
}
