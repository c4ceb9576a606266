//! `sessionview keypair create | list | deactivate`: the credentials of the query service's
//! callers.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rand::Rng;
use sessionview_store::{KeyPair, KeyPairAdmin, Role, Store};
use uuid::Uuid;

use crate::{DbArgs, with_store};

/// `sessionview keypair ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeypairCommand {
    /// Create a keypair and print its access key and secret key.
    Create(CreateArgs),
    /// List keypairs (without secrets).
    List(DbArgs),
    /// Deactivate a keypair: its requests are refused from now on.
    Deactivate(DeactivateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The owner's email.
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_EMAIL")]
    email: String,
    /// superadmin, admin (of its domain) or user.
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_ROLE")]
    role: String,
    /// The owner's domain.
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_DOMAIN", default_value = "default")]
    domain: String,
    /// The owner's user id (a new random one when absent).
    #[arg(long, env = "SESSIONVIEW_KEYPAIR_USER_ID")]
    user_id: Option<Uuid>,
}

#[derive(Debug, Args)]
pub(crate) struct DeactivateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The access key to deactivate.
    access_key: String,
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A new keypair: `AKIA` + 16 characters, and a 40-character secret, from the thread-local CSPRNG
/// (ChaCha, seeded by the operating system).
pub(crate) fn generate(email: &str, role: Role, domain: &str, user_id: Uuid) -> KeyPair {
    let mut rng = rand::rng();
    let mut pick = |alphabet: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
            .collect()
    };
    KeyPair {
        access_key: format!("AKIA{}", pick(UPPER_DIGITS, 16)),
        secret_key: pick(ALNUM, 40),
        user_id,
        user_email: email.to_owned(),
        domain_name: domain.to_owned(),
        role,
        is_active: true,
        created_at: chrono::Utc::now(),
    }
}

async fn insert<S: Store + KeyPairAdmin>(store: &S, kp: &KeyPair) -> anyhow::Result<()> {
    store.migrate().await.context("migrating the schema")?;
    store
        .insert_keypair(kp)
        .await
        .context("storing the keypair")
}

pub(crate) async fn run(cmd: KeypairCommand) -> anyhow::Result<()> {
    match cmd {
        KeypairCommand::Create(args) => {
            let role: Role = args.role.parse().map_err(anyhow::Error::msg)?;
            if args.email.trim().is_empty() || !args.email.contains('@') {
                bail!("--email {:?} is not an email address", args.email);
            }
            let kp = generate(
                &args.email,
                role,
                &args.domain,
                args.user_id.unwrap_or_else(Uuid::new_v4),
            );
            with_store!(args.db, |store| insert(&store, &kp).await)?;
            println!("access_key: {}", kp.access_key);
            println!("secret_key: {}", kp.secret_key);
            println!(
                "role: {}  domain: {}  email: {}  user_id: {}",
                kp.role.as_str(),
                kp.domain_name,
                kp.user_email,
                kp.user_id
            );
            Ok(())
        }
        KeypairCommand::List(db) => {
            let all = with_store!(db, |store| store
                .list_keypairs()
                .await
                .context("reading keypairs"))?;
            println!(
                "{:<22} {:<10} {:<7} {:<16} EMAIL",
                "ACCESS KEY", "ROLE", "ACTIVE", "DOMAIN"
            );
            for kp in all {
                println!(
                    "{:<22} {:<10} {:<7} {:<16} {}",
                    kp.access_key,
                    kp.role.as_str(),
                    if kp.is_active { "yes" } else { "no" },
                    kp.domain_name,
                    kp.user_email
                );
            }
            Ok(())
        }
        KeypairCommand::Deactivate(args) => {
            let found = with_store!(args.db, |store| store
                .deactivate_keypair(&args.access_key)
                .await
                .context("deactivating the keypair"))?;
            if !found {
                bail!("no keypair with access key {:?}", args.access_key);
            }
            println!("deactivated {}", args.access_key);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_backend_ai_shapes_and_differ() {
        let a = generate("a@b.c", Role::User, "default", Uuid::nil());
        let b = generate("a@b.c", Role::User, "default", Uuid::nil());
        assert_eq!(a.access_key.len(), 20);
        assert!(a.access_key.starts_with("AKIA"));
        assert_eq!(a.secret_key.len(), 40);
        assert!(a.secret_key.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.access_key, b.access_key);
        assert_ne!(a.secret_key, b.secret_key);
    }
}
