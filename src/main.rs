//! The `mcp-sidecar` binary: flags → config → logging → `mcp_sidecar::run`.
//!
//! Exit status: 0 after a clean shutdown, 2 for a configuration error (reported before stdin is
//! read), 1 for any other failure. Errors are printed once, on stderr, as one sentence.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use mcp_sidecar::cli::{
    Args, CHECK_REQUEST_TIMEOUT, Cli, Command, LogFormat, LogLevel, ONE_SHOT_REQUEST_TIMEOUT,
};
use mcp_sidecar::commands::{self, check, install, oneshot};
use mcp_sidecar::config::{Config, default_state_dir, rate_limit_store};

fn main() -> ExitCode {
    if let Some(code) = mistyped() {
        return code;
    }
    let cli = Cli::parse();
    match cli.command {
        None => proxy(cli.args),
        Some(Command::Login(l)) => {
            let device = l.device;
            subcommand(l.args, |config, rt| rt.block_on(commands::login(config, device)))
        }
        Some(Command::Logout(args)) => subcommand(args, |config, _| commands::logout(&config)),
        Some(Command::Status(s))
            if s.args.url.is_none()
                && s.args.url_flag.is_none()
                && std::env::var_os("MCP_SIDECAR_URL").is_none()
                && s.args.preset.is_none() =>
        {
            let dir = s.args.state_dir.clone().or_else(default_state_dir);
            let store = match rate_limit_store(&s.args, &|name| std::env::var(name).ok()) {
                Ok(store) => store,
                Err(e) => {
                    eprintln!("mcp-sidecar: {e}");
                    return ExitCode::from(2);
                }
            };
            ExitCode::from(commands::status(dir.as_deref(), None, s.clear_limits, store.as_ref()))
        }
        Some(Command::Status(s)) => subcommand(s.args, |config, _| {
            let store = config.rate_limit_store.clone();
            commands::status(config.state_dir.as_deref(), Some(&config), s.clear_limits, store.as_ref())
        }),
        Some(Command::Check(c)) => subcommand(one_shot(c.args, CHECK_REQUEST_TIMEOUT), |config, rt| {
            rt.block_on(check::check(config, c.json))
        }),
        Some(Command::Call(c)) => {
            let c = c.sorted();
            subcommand(one_shot(c.args, ONE_SHOT_REQUEST_TIMEOUT), |config, rt| {
                rt.block_on(oneshot::call(config, &c.method, c.params.as_deref()))
            })
        }
        Some(Command::Tools(t)) => {
            let t = t.sorted();
            let approve = t.approve.then(|| t.names.clone());
            subcommand(one_shot(t.args, ONE_SHOT_REQUEST_TIMEOUT), |config, rt| {
                rt.block_on(oneshot::tools(config, t.all, approve))
            })
        }
        Some(Command::Tool(t)) => subcommand(one_shot(t.args, ONE_SHOT_REQUEST_TIMEOUT), |config, rt| {
            rt.block_on(oneshot::tool(config, &t.name, &t.arg, t.json.as_deref()))
        }),
        Some(Command::Install(i)) => {
            let args = i.args.clone();
            let installing = Args { installing: true, ..i.args };
            subcommand(installing, |config, _| {
                let request = install::Request {
                    client: i.client,
                    name: i.name.as_deref(),
                    dry_run: i.dry_run,
                    config_file: i.config_file.as_deref(),
                    store_key: i.store_key,
                };
                install::install(&config, &args, request)
            })
        }
        Some(Command::Completions { shell }) => {
            let written =
                std::io::Write::write_all(&mut std::io::stdout(), &commands::completions::script(shell));
            if written.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        // Issue 23.10: the man page's title line takes the version alone (the two-line `--version`
        // put the protocol revisions above NAME).
        Some(Command::Man) => match clap_mangen::Man::new(Cli::command().version(env!("CARGO_PKG_VERSION")))
            .render(&mut std::io::stdout())
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
    }
}

/// Issue 23.7: `chek URL` met clap's "the subcommand … cannot be used with [URL]": a first word
/// close to a command's name is named, exit 2.
fn mistyped() -> Option<ExitCode> {
    let word = std::env::args().nth(1)?;
    let meant = mcp_sidecar::cli::mistyped_command(&word)?;
    eprintln!("mcp-sidecar: {word:?} is not a command: did you mean mcp-sidecar {meant}?");
    Some(ExitCode::from(2))
}

/// A one-shot command's settings: quiet (below), a person's `--request-timeout` unless one is
/// given (issue 23.3), and the fewest requests (issue 23.5).
fn one_shot(mut args: Args, timeout: f64) -> Args {
    args.request_timeout.get_or_insert(timeout);
    args.one_shot = true;
    quiet(args)
}

/// One-shot commands report for themselves: the proxy's own log lines (which would repeat the
/// error) only with -v, or an explicit --log-level other than the default.
fn quiet(mut args: Args) -> Args {
    if args.log_level == LogLevel::Info && args.verbose == 0 && args.quiet == 0 {
        args.log_level = LogLevel::Error;
    }
    args
}

/// The config (a problem: one line, exit 2), with logging set up and its warnings logged.
fn configure(args: Args) -> Result<Config, ExitCode> {
    let config = Config::from_cli(args, &|name| std::env::var(name).ok()).map_err(|e| {
        eprintln!("mcp-sidecar: {e}");
        ExitCode::from(2)
    })?;
    config.remember_secrets();
    if let Some(path) = &config.log_file
        && let Err(e) = mcp_sidecar::logfile::install(path)
    {
        eprintln!(
            "mcp-sidecar: --log-file {}: cannot write the log there ({e}): give a file in a directory you can write to",
            path.display()
        );
        return Err(ExitCode::from(2));
    }
    init_logging(config.log_level, config.log_format);
    for warning in &config.warnings {
        // Issue 23.11: one-shot commands log errors only, and the warning (a key without its
        // service's prefix) was not seen; they say it as a line of their own.
        if config.one_shot && config.log_level == LogLevel::Error {
            eprintln!("mcp-sidecar: warning: {warning}");
        } else {
            tracing::warn!("{warning}");
        }
    }
    Ok(config)
}

/// Runs a subcommand with its config, logging and a runtime.
fn subcommand(args: Args, run: impl FnOnce(Config, &tokio::runtime::Runtime) -> u8) -> ExitCode {
    let config = match configure(args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => ExitCode::from(run(config, &rt)),
        Err(e) => {
            eprintln!("mcp-sidecar: could not start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// The proxy: stdin/stdout ⇄ the remote server.
fn proxy(args: Args) -> ExitCode {
    let config = match configure(args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Issue 23.11: started by hand, it seemed to hang; it waits for a client's messages.
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!(
            "mcp-sidecar: waiting for an MCP client's messages on stdin (an MCP client starts this command itself; to try the server by hand: mcp-sidecar check, tools or call with the same options; Ctrl-D ends)"
        );
    }
    // One thread: a proxy's work per message is a few syscalls, and every hand-off between
    // threads costs a wake-up. Measured with shared/bench: current-thread beats two workers at
    // C=1 (0.55x vs 0.34x of direct HTTP) and at C=32 (0.86x vs 0.76x), with less memory.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-sidecar: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        // Inside the runtime: pipes register with its reactor.
        let (input, output) = (mcp_sidecar::stdio::stdin(), mcp_sidecar::stdio::stdout());
        mcp_sidecar::run(config, input, output, mcp_sidecar::platform::shutdown_signal()).await
    });
    // A blocking read on stdin may still be parked; do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Issue 23.1: the reason was answered to the client and said once on stderr already.
        Err(mcp_sidecar::RunError::Handshake) => ExitCode::from(1),
        Err(e) => {
            mcp_sidecar::logfile::eprintln(&format!("mcp-sidecar: {e}"));
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr only: stdout is the protocol (S-04, S-05). Dependencies log at most warnings
/// unless trace is asked for.
fn init_logging(level: LogLevel, format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let level = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let deps = if level == LevelFilter::TRACE { LevelFilter::DEBUG } else { LevelFilter::WARN };
    let filter = Targets::new().with_default(deps).with_target("mcp_sidecar", level);
    // Every line passes the redaction of the secrets this process holds (issue 10.9).
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| {
            // Issue 25.4: `--log-file` gets each line too, redacted.
            mcp_sidecar::secrets::RedactingWriter(mcp_sidecar::logfile::AlsoToFile(std::io::stderr()))
        })
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt.with_ansi(false)).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
}
