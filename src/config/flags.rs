//! The settings' flags on `dev`, `server`, `worker` and `migrate`, built from `SETTINGS`
//! (clap's builder, so a flag, its value name and its help come from the one description),
//! plus `--config FILE` and `--print-config`. Clap only collects the text: checking and
//! precedence are `resolve`'s, so a bad value is named by its flag like any other source.

use super::render::help_for;
use super::settings::{Cmd, Kind, SETTINGS};
use super::{ConfigError, Effective, Given};
use clap::{Arg, ArgAction, ArgMatches};
use std::marker::PhantomData;
use std::path::PathBuf;

/// Which command a `Flags` is for.
pub trait ForCommand {
    const CMD: Cmd;
}

pub struct ForDev;
pub struct ForServer;
pub struct ForWorker;
pub struct ForMigrate;

impl ForCommand for ForDev {
    const CMD: Cmd = Cmd::Dev;
}
impl ForCommand for ForServer {
    const CMD: Cmd = Cmd::Server;
}
impl ForCommand for ForWorker {
    const CMD: Cmd = Cmd::Worker;
}
impl ForCommand for ForMigrate {
    const CMD: Cmd = Cmd::Migrate;
}

/// The flags of command `C`'s settings as given (`#[command(flatten)]` it).
pub struct Flags<C> {
    given: Given,
    print_config: bool,
    _cmd: PhantomData<C>,
}

impl<C: ForCommand> Flags<C> {
    /// The command's settings from these flags, the environment and the config file.
    pub fn resolve(&self) -> Result<Effective, ConfigError> {
        super::resolve(C::CMD, &self.given)
    }

    /// `--print-config`: print the settings instead of running.
    pub fn print_config(&self) -> bool {
        self.print_config
    }
}

const CONFIG: &str = "config";
const PRINT_CONFIG: &str = "print-config";

impl<C: ForCommand> clap::FromArgMatches for Flags<C> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Given {
            config: m.get_one::<PathBuf>(CONFIG).cloned(),
            ..Given::default()
        };
        for s in SETTINGS.iter().filter(|s| s.used_by(C::CMD)) {
            let raws: Vec<String> = match s.kind {
                Kind::Switch if m.get_flag(s.flag) => vec!["true".into()],
                Kind::Switch => continue,
                _ => match m.get_many::<String>(s.flag) {
                    Some(v) => v.cloned().collect(),
                    None => continue,
                },
            };
            given.values.insert(s.key, raws);
        }
        Ok(Flags {
            given,
            print_config: m.get_flag(PRINT_CONFIG),
            _cmd: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<C: ForCommand> clap::Args for Flags<C> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = SETTINGS
            .iter()
            .filter(|s| s.used_by(C::CMD))
            .fold(cmd, |cmd, s| {
                let arg = Arg::new(s.flag).long(s.flag).help(help_for(s, C::CMD));
                cmd.arg(match s.kind {
                    Kind::Switch => arg.action(ArgAction::SetTrue),
                    Kind::Paths => arg
                        .action(ArgAction::Append)
                        .value_name(s.value_name)
                        .value_parser(clap::value_parser!(String)),
                    _ => arg
                        .action(ArgAction::Set)
                        .value_name(s.value_name)
                        .value_parser(clap::value_parser!(String)),
                })
            });
        cmd.arg(
            Arg::new(CONFIG)
                .long(CONFIG)
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "Read settings from this TOML file (docs/configuration.md); a flag or an \
                     AETHERIS_* variable wins over it. [env: AETHERIS_CONFIG]",
                ),
        )
        .arg(
            Arg::new(PRINT_CONFIG)
                .long(PRINT_CONFIG)
                .action(ArgAction::SetTrue)
                .help(
                    "Print the effective settings (each with where it came from: a flag, a \
                     variable, the config file's line, or the default) and exit; key files \
                     are shown by path, a database password as ***.",
                ),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Key, Source};
    use clap::{Args, FromArgMatches};

    fn parse<C: ForCommand>(args: &[&str]) -> Result<Flags<C>, clap::Error> {
        let cmd = Flags::<C>::augment_args(clap::Command::new("aetheris"));
        let m = cmd.try_get_matches_from(args)?;
        Flags::<C>::from_arg_matches(&m)
    }

    #[test]
    fn each_command_has_the_flags_of_the_settings_it_reads_and_they_win() {
        let f = parse::<ForServer>(&[
            "aetheris",
            "--database-url",
            "postgres://u@h/d",
            "--auth-hs256-secret-file",
            "a.key,b.key",
            "--auth-hs256-secret-file",
            "c.key",
            "--insecure-no-auth",
            "--config",
            "x.toml",
            "--print-config",
        ])
        .unwrap();
        assert!(f.print_config());
        assert_eq!(
            f.given.config.as_deref(),
            Some(std::path::Path::new("x.toml"))
        );
        assert_eq!(
            f.given.values[&Key::Hs256SecretFiles],
            ["a.key,b.key", "c.key"]
        );
        assert_eq!(f.given.values[&Key::InsecureNoAuth], ["true"]);
        assert!(!f.given.values.contains_key(&Key::NoMigrate));
        let env = |name: &str| match name {
            "AETHERIS_AUTH_HS256_SECRET_FILE" => Some("env.key".to_string()),
            "AETHERIS_INSECURE_NO_AUTH" => Some("false".to_string()),
            _ => None,
        };
        let without_file = Given {
            config: None,
            ..f.given.clone()
        };
        let effective = crate::config::resolve_with(Cmd::Server, &without_file, &env).unwrap();
        assert_eq!(effective.paths(Key::Hs256SecretFiles).len(), 3);
        assert!(effective.switch(Key::InsecureNoAuth));
        assert_eq!(
            effective.source(Key::InsecureNoAuth),
            Some(&Source::Flag("insecure-no-auth"))
        );

        // A flag of a setting the command does not read is a usage error.
        assert!(parse::<ForServer>(&["aetheris", "--admin-bind", "x:1"]).is_err());
        assert!(parse::<ForMigrate>(&["aetheris", "--bind", "x:1"]).is_err());
        assert!(parse::<ForWorker>(&["aetheris", "--admin-bind", "x:1"]).is_ok());
        // Given twice, a single-valued flag is refused as before.
        assert!(parse::<ForDev>(&["aetheris", "--bind", "a:1", "--bind", "b:2"]).is_err());
    }
}
