//! Signing in: the user name is a `[sql]` token's name (`datx` for the `[sql]` table's own
//! token) and the password is the token, compared in constant time. The caller found is
//! bound to the connection: its session never looks a caller up again.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{
    ClientInfo, ConnectionManager, PgWireConnectionState, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::Activity;

use crate::query::access::{Caller, Callers};
use crate::query::pg_catalog;

/// The caller a connection signed in as, set once by its sign-in and read by its session
/// for every statement: the token presented at sign-in decides what the session sees.
pub type SignedIn = Arc<OnceLock<Arc<Caller>>>;

/// The password check of one connection.
#[derive(Debug)]
pub struct PasswordCheck {
    callers: Callers,
    signed_in: SignedIn,
}

#[async_trait]
impl AuthSource for PasswordCheck {
    /// Never asked: `verify_password` below compares digests instead of passwords.
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(refused(login))
    }

    /// The password is a token, and the user must be that token's user. Every token is
    /// compared whichever user is named, so the time taken tells nothing about which
    /// users exist.
    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default();
        let caller = self
            .callers
            .by_secret(presented)
            .filter(|caller| caller.user() == user);
        match caller {
            Some(caller) => {
                tracing::info!(user, host = login.host(), "PostgreSQL client signed in");
                // A connection signs in once; pgwire never asks twice.
                let _ = self.signed_in.set(caller);
                Ok(None)
            }
            None => {
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

type PasswordSignIn =
    CleartextPasswordAuthStartupHandler<PasswordCheck, DefaultServerParameterProvider>;

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
        signed_in: SignedIn,
        pids: Arc<RandomPidSecretKeyGenerator>,
        connections: Arc<ConnectionManager>,
        tls_required: bool,
        activity: Arc<Activity>,
    ) -> SignIn {
        let check = PasswordCheck { callers, signed_in };
        SignIn {
            password: password_handler(check, connections).with_pid_secret_key_generator(pids),
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
fn password_handler(check: PasswordCheck, connections: Arc<ConnectionManager>) -> PasswordSignIn {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = format!(
        "{} (datx {})",
        pg_catalog::SERVER_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    parameters.is_superuser = false;
    parameters.default_transaction_read_only = true;
    parameters.time_zone = "UTC".into();
    CleartextPasswordAuthStartupHandler::new(check, parameters).with_connection_manager(connections)
}
