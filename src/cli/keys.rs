//! `segmenta keys …`: API keys for `serve --auth-keys`.

use clap::{Args, Subcommand};
use segmenta::service::auth::{generate_key, hash_key, Role};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a fresh random key: prints it once, and the line for the keys
    /// file (which holds only the key's SHA-256, never the key).
    New {
        /// Who holds the key, as the audit log will name it (letters,
        /// digits, `-`, `_`, `.`; at most 64).
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long)]
        role: Role,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::New { name, role } => {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                anyhow::bail!(
                    "key names are 1 to 64 letters, digits, '-', '_' or '.', got {name:?}"
                );
            }
            let key = generate_key().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            println!("key for {name} (shown once: give it to the client as `authorization: Bearer KEY`):");
            println!("{key}");
            println!();
            println!("line for the keys file (then reload the server with SIGHUP):");
            println!("{name} {role} {}", hash_key(&key));
            Ok(())
        }
    }
}
