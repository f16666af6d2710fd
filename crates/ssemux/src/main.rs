//! The `ssemux` binary: command line, logging, signals. Thin by design: every
//! behaviour lives in `ssemux-gateway`; this file only turns flags, files and
//! signals into calls on it, and adds context to errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ssemux_gateway::Config;
use ssemux_gateway::Gateway;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "ssemux",
    version,
    about = "SSE multiplexing reverse proxy: one upstream stream per user, live triggers for every tab"
)]
struct Cli {
    /// Log format: `human` (coloured only on a terminal, never with
    /// `NO_COLOR` set) or `json`.
    #[arg(
        long,
        global = true,
        default_value = "human",
        env = "SSEMUX_LOG_FORMAT",
        value_parser = ["human", "json"]
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML). Every key can also be set by an
        /// `SSEMUX_<SECTION>_<KEY>` variable or `--set section.key=value`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address [default: 127.0.0.1:8080, or `listen` in the file]
        /// (same as `--set listen=…`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Backend base URL, e.g. `http://127.0.0.1:8081` [required: here, as
        /// `backend` in the file, or SSEMUX_BACKEND] (same as `--set backend=…`).
        #[arg(long)]
        backend: Option<String>,
        /// Override any key: `--set hub.grace=5s` (repeatable). Every key and
        /// its default: `ssemux check-config /dev/null --backend URL --print`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Validate a configuration file — every key, and the files it names
    /// (TLS certificate and key, CA, JWT keys) — and print it with defaults
    /// filled in. Exit 2 on any error, naming the key.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Backend base URL, as `serve --backend` would be given it.
        #[arg(long)]
        backend: Option<String>,
        /// Overrides, as `serve --set` would be given them.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Print the effective configuration (every key, defaults filled in).
        #[arg(long)]
        print: bool,
    },
    /// Run the mock chat backend and the gateway together on loopback
    /// (built with the `demo` feature: `make run`).
    #[cfg(feature = "demo")]
    Demo {
        /// Gateway address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Mock backend address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        backend_listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssemux: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::CheckConfig {
            file,
            backend,
            mut set,
            print,
        } => {
            if let Some(b) = backend {
                set.push(format!("backend={b}"));
            }
            let checked = Config::load(Some(&file), std::env::vars(), &set)
                .map_err(|e| explain(&e, Some(&file), &set))
                .and_then(|cfg| require_backend(Some(&file), &set).map(|()| cfg))
                .and_then(|cfg| {
                    // Building the gateway reads every file the
                    // configuration names; nothing listens or connects.
                    let built = rt.block_on(async { Gateway::new(cfg.clone()).map(drop) });
                    built
                        .map(|()| cfg)
                        .map_err(|e| format!("{}: {e}", file.display()))
                });
            return match checked {
                Ok(cfg) => {
                    for d in &cfg.deprecated {
                        eprintln!("{}: warning: {d}", file.display());
                    }
                    if print {
                        println!("{}", cfg.to_toml());
                    }
                    eprintln!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Serve {
            config,
            listen,
            backend,
            mut set,
        } => {
            if let Some(l) = listen {
                set.push(format!("listen={l}"));
            }
            if let Some(b) = backend {
                set.push(format!("backend={b}"));
            }
            let loaded = Config::load(config.as_deref(), std::env::vars(), &set)
                .map_err(|e| explain(&e, config.as_deref(), &set))
                .and_then(|cfg| require_backend(config.as_deref(), &set).map(|()| cfg));
            match loaded {
                Ok(cfg) => rt.block_on(serve(cfg, Source { file: config, set })),
                Err(e) => {
                    eprintln!("ssemux: configuration: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            listen,
            backend_listen,
        } => rt.block_on(demo(listen, backend_listen)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssemux: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration error with where the bad value came from: the file and
/// line, the environment variable, or the `--set` flag.
fn explain(
    e: &ssemux_gateway::ConfigError,
    file: Option<&std::path::Path>,
    set: &[String],
) -> String {
    let text = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let name = file.map_or_else(|| "configuration".to_string(), |f| f.display().to_string());
    let Some(key) = e.key() else {
        return format!("{name}: {e}");
    };
    match ssemux_gateway::config_origin(key, &text, &env, set) {
        Some(ssemux_gateway::Origin::File(line)) => format!("{name}:{line}: {e}"),
        Some(other) => format!("{other}: {e}"),
        None => format!("{name}: {e}"),
    }
}

/// `serve` needs to be told where the backend is: a default address would
/// start without a word and answer every request with `502`.
fn require_backend(file: Option<&std::path::Path>, set: &[String]) -> Result<(), String> {
    let text = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    match ssemux_gateway::config_origin("backend", &text, &env, set) {
        Some(_) => Ok(()),
        None => Err(
            "no backend given: say where your backend is with `--backend http://host:port`, \
             `backend = \"http://host:port\"` in the configuration file, or SSEMUX_BACKEND"
                .to_string(),
        ),
    }
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SSEMUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes belong on a terminal, not in files or the journal.
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Where a SIGHUP re-reads the configuration from: the same file, the
/// environment as it was at start, and the same `--set` flags.
#[derive(Clone, Debug, Default)]
struct Source {
    file: Option<PathBuf>,
    set: Vec<String>,
}

async fn serve(cfg: Config, source: Source) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    serve_on(cfg, listener, source).await
}

async fn serve_on(cfg: Config, listener: TcpListener, source: Source) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives once we log "serving" must find
    // them, not the default action.
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let hangup = hangup_signal().context("cannot install the SIGHUP handler")?;
    let local = listener.local_addr().context("listener address")?;
    let backend = cfg.backend.clone();
    for d in &cfg.deprecated {
        tracing::warn!("configuration: {d}");
    }
    let gateway = Gateway::new(cfg).context("cannot build gateway")?;
    tracing::info!(listen = %local, backend = %backend, "ssemux serving");
    let shutdown = gateway.shutdown_token();
    tokio::spawn(reload_on_hangup(hangup, gateway.clone(), source));
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutting down; a second signal exits at once");
        shutdown.cancel();
        signals.next().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    gateway.serve(listener).await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> std::io::Result<Hangup> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
}

#[cfg(not(unix))]
fn hangup_signal() -> std::io::Result<Hangup> {
    Ok(())
}

/// On every SIGHUP, re-read the configuration and apply what can change at
/// run time (translation rules). A configuration that does not load or
/// validate is refused with a log line naming the key; the running one stays.
#[cfg(unix)]
async fn reload_on_hangup(mut hangup: Hangup, gateway: std::sync::Arc<Gateway>, source: Source) {
    let env: Vec<(String, String)> = std::env::vars().collect();
    while hangup.recv().await.is_some() {
        let cfg = match Config::load(source.file.as_deref(), env.clone(), &source.set) {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the running configuration stays");
                continue;
            }
        };
        match gateway.reload(&cfg) {
            Ok(r) => {
                tracing::info!(applied = ?r.applied, "configuration reloaded");
                if !r.need_restart.is_empty() {
                    tracing::warn!(sections = ?r.need_restart, "changed sections take effect only after a restart");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the running configuration stays");
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_: Hangup, _: std::sync::Arc<Gateway>, _: Source) {}

/// SIGTERM and SIGINT, both meaning "shut down".
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(feature = "demo")]
async fn demo(listen: SocketAddr, backend_listen: SocketAddr) -> anyhow::Result<()> {
    let backend = ssemux_mock_upstream::MockBackend::start(backend_listen)
        .await
        .with_context(|| format!("cannot start the mock backend on {backend_listen}"))?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listen = listener.local_addr().context("listener address")?;
    let set = vec![
        format!("listen={listen}"),
        format!("backend={}", backend.url()),
    ];
    let cfg = Config::from_parts("", std::env::vars(), &set).context("demo configuration")?;
    println!();
    println!("  ssemux demo");
    println!("  open   http://{listen}/   and log in as alice, bob or carol");
    println!("         http://{listen}/?htmx=4   is the same page on htmx 4");
    println!("         (use a second browser profile or private window for a second user)");
    let web = ssemux_mock_upstream::web_dir();
    if !web.join("node_modules").is_dir() {
        println!(
            "  NOTE   the page's htmx files are not installed ({} is missing): run `make web`",
            web.join("node_modules").display()
        );
    }
    println!("  curl:  curl -c jar -d user=alice http://{listen}/login");
    println!("         curl -b jar -N http://{listen}/events");
    println!("  mock backend at {}", backend.url());
    println!();
    serve_on(cfg, listener, Source { file: None, set }).await
}
