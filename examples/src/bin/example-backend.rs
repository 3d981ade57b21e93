//! A small HTTP backend for trying and benchmarking the balancer: it answers
//! every request with a short text naming itself, after an optional delay,
//! and serves `/healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "A small HTTP backend for trying Usher")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in responses (defaults to the address).
    #[arg(long)]
    name: Option<String>,
    /// Delay before each response, e.g. `20ms`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Size of the response body in bytes.
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let name = args.name.clone().unwrap_or_else(|| args.listen.to_string());
    let mut text = format!("hello from {name}\n").into_bytes();
    if args.body_bytes > text.len() {
        text.resize(args.body_bytes, b'.');
    }
    let body = Bytes::from(text);
    eprintln!(
        "example-backend {name} listening on {}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let delay = args.delay;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    if req.uri().path() == "/healthz" {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"ok\n",
                        ))));
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(Response::new(Full::new(body)))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
