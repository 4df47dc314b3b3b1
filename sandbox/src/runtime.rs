//! The wasmtime runtime: one [`Sandbox`] (engine, linker, epoch ticker, compile cache) per node,
//! a [`LoadedTool`] (`InstancePre`) per tool, and a fresh, fully limited `Store` per call.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::cache::{CacheOutcome, CompileCache};
use super::capture::{CappedPipe, OutputLimitExceeded};
use super::guarded_fs::{DiskQuota, GuardedFsView};
use super::outcome::{
    CallReport, ErrorKind, LogLevel, LogRecord, QueuedMessage, SandboxError, ToolDescription,
};
use super::policy::{
    FsAccess, Fuel, MAX_MEMORY, MAX_TABLE_ELEMENTS, ResolvedGrant, ResolvedPolicy,
};

mod bindings {
    //! Host bindings generated from `wit/tool.wit`.
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "tool",
        exports: { default: async },
    });
}

mod actor_bindings {
    //! Host bindings of the `actor` world (a tool that also handles messages).
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "actor",
        exports: { default: async },
        with: { "outpost:guest/host": super::bindings::outpost::guest::host },
    });
}

use actor_bindings::outpost::guest::mailbox as wit_mailbox;
use bindings::outpost::guest::host as wit_host;

/// Most messages one `on-message` call may queue.
pub const MAX_QUEUED_MESSAGES: usize = 100;
/// Most bytes (destinations and payloads) one `on-message` call may queue.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024;

/// How the runtime is built. The defaults suit a node; benches turn meters off to measure them.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled components are cached; `None` compiles on every load.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Calls that may run at once (the pooling allocator reserves this many instance slots);
    /// further calls wait for a slot.
    pub max_concurrent_calls: u32,
    /// Charge fuel for every instruction (needed for fuel limits).
    pub fuel_metering: bool,
    /// Check the epoch in loops (needed for wall-time limits on busy guests).
    pub epoch_interruption: bool,
    /// Period of the epoch ticker: the wall-time limit's resolution.
    pub epoch_tick: Duration,
    /// Use the pooling allocator (pre-reserved slots, copy-on-write memory images).
    pub pooling: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_concurrent_calls: 64,
            fuel_metering: true,
            epoch_interruption: true,
            epoch_tick: Duration::from_millis(5),
            pooling: true,
        }
    }
}

/// Most core instances, tables and linear memories one tool instance may have (a component is
/// several core instances); the pool and the per-call limiter use the same numbers.
const MAX_CORE_INSTANCES: u32 = 64;
const MAX_TABLES: u32 = 64;
const MAX_MEMORIES: u32 = 8;

/// Raised from the resource limiter when a tool grows past its memory or table limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LimitExceeded(String);

/// Per-call resource limiter that remembers which limit was hit.
struct CallLimiter {
    memory_limit: usize,
    memory_total: usize,
    hit: Option<String>,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_total - current.min(self.memory_total) + desired;
        if total > self.memory_limit {
            let message = format!(
                "memory would grow to {} bytes, past the limit of {} bytes",
                total, self.memory_limit
            );
            self.hit = Some(message.clone());
            return Err(wasmtime::Error::new(LimitExceeded(message)));
        }
        self.memory_total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            let message = format!(
                "a table would grow to {desired} elements, past the limit of {MAX_TABLE_ELEMENTS}"
            );
            self.hit = Some(message.clone());
            return Err(wasmtime::Error::new(LimitExceeded(message)));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES as usize
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES as usize
    }
}

/// Handles (open files and directories, streams, sockets) one call may hold at once.
pub const MAX_HANDLES: usize = 256;
/// Log records one call may keep, whatever their size.
pub const MAX_LOG_RECORDS: usize = 10_000;
/// What each log record counts against the output limit besides its text.
const LOG_RECORD_COST: usize = 64;
/// Largest answer `describe` may give (all its fields together).
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;

/// Log lines of one call, capped by bytes (each record's text plus a fixed share) and count.
struct LogBuffer {
    records: Vec<LogRecord>,
    bytes: usize,
    cap: usize,
    dropped: u64,
}

/// Everything a call's `Store` holds.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: CallLimiter,
    logs: LogBuffer,
    disk: Arc<DiskQuota>,
    /// The call's policy (the names it may look up).
    policy: Arc<ResolvedPolicy>,
    /// What `mailbox.send` queued; `None` outside `on-message`.
    outbox: Option<Outbox>,
}

/// Messages an `on-message` call queued.
#[derive(Default)]
struct Outbox {
    messages: Vec<QueuedMessage>,
    bytes: usize,
}

impl CallState {
    /// The filesystem as guests see it: wasmtime-wasi's, behind the call's guards.
    fn guarded_fs(&mut self) -> GuardedFsView<'_> {
        GuardedFsView {
            inner: wasmtime_wasi::filesystem::WasiFilesystemCtxView {
                ctx: self.wasi.filesystem(),
                table: &mut self.table,
            },
            quota: &self.disk,
        }
    }

    /// Name lookups as guests see them: wasmtime-wasi's, limited to the granted names.
    fn guarded_lookup(&mut self) -> crate::guarded_net::GuardedLookupView<'_> {
        crate::guarded_net::GuardedLookupView {
            inner: wasmtime_wasi::sockets::WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
            names: &self.policy,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit_host::Host for CallState {
    fn log(&mut self, level: wit_host::Level, message: String) {
        let level = match level {
            wit_host::Level::Trace => LogLevel::Trace,
            wit_host::Level::Debug => LogLevel::Debug,
            wit_host::Level::Info => LogLevel::Info,
            wit_host::Level::Warn => LogLevel::Warn,
            wit_host::Level::Error => LogLevel::Error,
        };
        let logs = &mut self.logs;
        // Each record costs its text and a fixed share, so empty records are bounded too.
        let cost = message.len() + LOG_RECORD_COST;
        if logs.bytes + cost > logs.cap || logs.records.len() >= MAX_LOG_RECORDS {
            logs.dropped += 1;
            return;
        }
        logs.bytes += cost;
        logs.records.push(LogRecord { level, message });
    }
}

impl wit_mailbox::Host for CallState {
    fn send(&mut self, to: String, payload: String) -> Result<(), String> {
        let Some(outbox) = self.outbox.as_mut() else {
            return Err("mailbox.send works only inside on-message (an actor agent's call)".into());
        };
        if outbox.messages.len() >= MAX_QUEUED_MESSAGES {
            return Err(format!(
                "one on-message call may send at most {MAX_QUEUED_MESSAGES} messages"
            ));
        }
        let size = to.len() + payload.len();
        if outbox.bytes + size > MAX_QUEUED_BYTES {
            return Err(format!(
                "one on-message call may send at most {MAX_QUEUED_BYTES} bytes"
            ));
        }
        if to.trim().is_empty() {
            return Err("to: name an actor id, agent:NAME or team:NAME".into());
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&payload) {
            return Err(format!("payload: not JSON: {e}"));
        }
        outbox.bytes += size;
        outbox.messages.push(QueuedMessage { to, payload });
        Ok(())
    }
}

/// Stops the epoch ticker thread when the sandbox is dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Inner {
    engine: Engine,
    linker: Linker<CallState>,
    config: SandboxConfig,
    slots: Semaphore,
    cache: Option<CompileCache>,
    _ticker: Option<Ticker>,
}

/// The node's WebAssembly runtime. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Pooling allocator settings for `config`; `pagemap` asks for PAGEMAP_SCAN-based resets (and
/// fails engine creation where the kernel lacks it).
fn pooling(config: &SandboxConfig, pagemap: bool) -> InstanceAllocationStrategy {
    let slots = config.max_concurrent_calls.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(16))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(16))
        .total_stacks(slots)
        .max_memories_per_component(MAX_MEMORIES)
        .max_tables_per_component(MAX_TABLES)
        .max_core_instances_per_component(MAX_CORE_INSTANCES)
        .max_memory_size(MAX_MEMORY as usize)
        .table_elements(MAX_TABLE_ELEMENTS * 2);
    if pagemap {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(16 << 20)
            .table_keep_resident(1 << 20);
    } else {
        pool.pagemap_scan(Enabled::No)
            .linear_memory_keep_resident(64 << 10)
            .table_keep_resident(16 << 10);
    }
    InstanceAllocationStrategy::Pooling(pool)
}

fn internal(context: &str, err: impl std::fmt::Display) -> SandboxError {
    SandboxError::new(ErrorKind::InvalidComponent, format!("{context}: {err}"))
}

impl Sandbox {
    /// Builds the engine, the linker (WASI preview 2 and `outpost:guest/host`) and starts the
    /// epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true);
        wasm.consume_fuel(config.fuel_metering);
        wasm.epoch_interruption(config.epoch_interruption);
        wasm.max_wasm_stack(1 << 20);
        wasm.async_stack_size(2 << 20);
        // Resetting an instance's memory between calls is the largest cost of a fresh instance.
        // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), wasmtime finds the pages a call dirtied
        // and restores only those, keeping them resident: no madvise, no TLB shootdown and no
        // page faults on the next call. Elsewhere it memsets the low `keep_resident` bytes, so
        // that stays small.
        let engine = if config.pooling {
            Engine::new(wasm.allocation_strategy(pooling(&config, true)))
                .or_else(|_| Engine::new(wasm.allocation_strategy(pooling(&config, false))))
        } else {
            Engine::new(&wasm)
        };
        let engine = engine.map_err(|err| internal("cannot build the wasm engine", err))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|err| internal("cannot link WASI", err))?;
        crate::guarded_fs::add_to_linker(&mut linker, CallState::guarded_fs)
            .map_err(|err| internal("cannot link the guarded filesystem", err))?;
        crate::guarded_net::add_to_linker(&mut linker, CallState::guarded_lookup)
            .map_err(|err| internal("cannot link the guarded name lookup", err))?;
        wit_host::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(|err| internal("cannot link outpost:guest/host", err))?;
        wit_mailbox::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(|err| internal("cannot link outpost:guest/mailbox", err))?;
        let ticker = config.epoch_interruption.then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let weak = engine.weak();
            let flag = stop.clone();
            let tick = config.epoch_tick;
            let spawned = std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !flag.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        match weak.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                });
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start the epoch ticker; wall-time limits rely on the call timer alone");
            }
            Ticker { stop }
        });
        let cache = config.cache_dir.clone().map(CompileCache::new);
        Ok(Self {
            inner: Arc::new(Inner {
                slots: Semaphore::new(config.max_concurrent_calls.max(1) as usize),
                engine,
                linker,
                config,
                cache,
                _ticker: ticker,
            }),
        })
    }

    /// The engine (for benches and tools that precompile).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compiles (or loads from the cache) a component, checks its imports against what the node
    /// provides and its exports against the `tool` world, and binds it to `policy`.
    pub fn load(&self, wasm: &[u8], policy: ResolvedPolicy) -> Result<LoadedTool, SandboxError> {
        check_component_header(wasm)?;
        let digest = crate::component_digest(wasm);
        if let Some(component) = self.cached(&digest) {
            return self.link(component, CacheOutcome::Hit, digest, policy);
        }
        let component = self.compile(wasm, &digest)?;
        self.link(component, CacheOutcome::Compiled, digest, policy)
    }

    /// Loads a component the caller keeps in a file named by its sha256 `digest`, checked when
    /// the file was stored (the node's tool store). When the compiled code is cached the file is
    /// neither read nor hashed again: for a large tool, reading and hashing cost more than loading
    /// the compiled code. On a miss the file is read, checked against `digest`, compiled and
    /// cached.
    pub fn load_stored(
        &self,
        path: &std::path::Path,
        digest: &str,
        policy: ResolvedPolicy,
    ) -> Result<LoadedTool, SandboxError> {
        if let Some(component) = self.cached(digest) {
            return self.link(component, CacheOutcome::Hit, digest.to_string(), policy);
        }
        let wasm = read_component(path)?;
        check_component_header(&wasm)?;
        let actual = crate::component_digest(&wasm);
        if actual != digest {
            return Err(SandboxError::new(
                ErrorKind::InvalidComponent,
                format!(
                    "{} has sha256 {actual}, not the {digest} it was stored under",
                    path.display()
                ),
            ));
        }
        let component = self.compile(&wasm, digest)?;
        self.link(component, CacheOutcome::Compiled, actual, policy)
    }

    /// Links a compiled component against the node's imports and checks its exports.
    fn link(
        &self,
        component: Component,
        outcome: CacheOutcome,
        digest: String,
        policy: ResolvedPolicy,
    ) -> Result<LoadedTool, SandboxError> {
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|err| {
                SandboxError::new(
                    ErrorKind::InvalidComponent,
                    format!(
                        "the component needs something this node does not provide: {}",
                        error_chain(&err)
                    ),
                )
            })?;
        // An actor is a tool that also exports on-message.
        let actor = actor_bindings::ActorPre::new(pre.clone()).ok();
        let pre = bindings::ToolPre::new(pre).map_err(|err| {
            SandboxError::new(
                ErrorKind::InvalidComponent,
                format!(
                    "the component does not implement the outpost:guest/tool world: {}",
                    error_chain(&err)
                ),
            )
        })?;
        Ok(LoadedTool {
            sandbox: self.clone(),
            pre,
            actor,
            policy: Arc::new(policy),
            digest,
            cache: outcome,
        })
    }

    /// Reads a component file and loads it.
    pub fn load_file(
        &self,
        path: &std::path::Path,
        policy: ResolvedPolicy,
    ) -> Result<LoadedTool, SandboxError> {
        self.load(&read_component(path)?, policy)
    }

    /// The cached compiled code of the component with `digest`, when there is a cache and it
    /// holds a valid entry.
    fn cached(&self, digest: &str) -> Option<Component> {
        self.inner
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&self.inner.engine, digest))
    }

    /// Compiles `wasm` (whose sha256 is `digest`) and caches the result when there is a cache.
    fn compile(&self, wasm: &[u8], digest: &str) -> Result<Component, SandboxError> {
        let component = Component::new(&self.inner.engine, wasm).map_err(|err| {
            SandboxError::new(
                ErrorKind::InvalidComponent,
                format!("not a valid component: {}", error_chain(&err)),
            )
        })?;
        if let Some(cache) = &self.inner.cache {
            cache.store(&self.inner.engine, digest, &component);
        }
        Ok(component)
    }
}

fn read_component(path: &std::path::Path) -> Result<Vec<u8>, SandboxError> {
    std::fs::read(path).map_err(|err| {
        SandboxError::new(
            ErrorKind::InvalidComponent,
            format!("cannot read {}: {err}", path.display()),
        )
    })
}

/// Rejects what is plainly not a component before handing bytes to the compiler, with a message
/// that says what it is instead.
fn check_component_header(wasm: &[u8]) -> Result<(), SandboxError> {
    const MAGIC: &[u8] = b"\0asm";
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Err(SandboxError::new(
            ErrorKind::InvalidComponent,
            "not a WebAssembly file (the `\\0asm` header is missing)",
        ));
    }
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(SandboxError::new(
            ErrorKind::InvalidComponent,
            "this is a core WebAssembly module, not a component: build the tool for wasm32-wasip2 \
             (or wrap the module with `wasm-tools component new`)",
        ));
    }
    Ok(())
}

/// The error and its causes on one line.
fn error_chain(err: &wasmtime::Error) -> String {
    let parts: Vec<String> = err.chain().map(|cause| cause.to_string()).collect();
    parts.join(": ")
}

/// A compiled, linked tool bound to its policy. Cheap to clone; every call gets a fresh instance.
#[derive(Clone)]
pub struct LoadedTool {
    sandbox: Sandbox,
    pre: bindings::ToolPre<CallState>,
    /// Present when the component implements the `actor` world too.
    actor: Option<actor_bindings::ActorPre<CallState>>,
    policy: Arc<ResolvedPolicy>,
    digest: String,
    cache: CacheOutcome,
}

impl std::fmt::Debug for LoadedTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTool")
            .field("digest", &self.digest)
            .field("cache", &self.cache)
            .finish()
    }
}

impl LoadedTool {
    /// sha256 of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether the compiled code came from the cache.
    pub fn from_cache(&self) -> bool {
        self.cache == CacheOutcome::Hit
    }

    /// The policy the tool runs under.
    pub fn policy(&self) -> &ResolvedPolicy {
        &self.policy
    }

    /// The same compiled, linked tool under another policy (no compile, no link: the policy is
    /// applied when each call builds its store).
    pub fn with_policy(&self, policy: ResolvedPolicy) -> LoadedTool {
        LoadedTool {
            policy: Arc::new(policy),
            ..self.clone()
        }
    }

    /// Calls `describe` in a fresh instance under the tool's limits.
    pub async fn describe(&self) -> Result<ToolDescription, SandboxError> {
        let (result, _) = self
            .run(false, async |store| {
                let tool = self.pre.instantiate_async(&mut *store).await?;
                tool.call_describe(store).await
            })
            .await;
        let info = result?;
        let size =
            info.name.len() + info.version.len() + info.description.len() + info.input_schema.len();
        if size > MAX_DESCRIPTION_BYTES {
            return Err(SandboxError::new(
                ErrorKind::OutputLimit,
                format!(
                    "describe() answered {size} bytes; a description may be at most {MAX_DESCRIPTION_BYTES} bytes"
                ),
            ));
        }
        Ok(ToolDescription {
            name: info.name,
            version: info.version,
            description: info.description,
            input_schema: info.input_schema,
        })
    }

    /// Calls `invoke(input)` in a fresh instance under the tool's limits. Never panics and never
    /// leaves state behind: whatever the tool does, the next call starts clean.
    pub async fn invoke(&self, input: &str) -> CallReport {
        let (result, mut report) = self
            .run(false, async |store| {
                let tool = self.pre.instantiate_async(&mut *store).await?;
                tool.call_invoke(store, input).await
            })
            .await;
        report.result = match result {
            Ok(Ok(output)) => {
                let cap = self.policy.limits.max_output;
                if output.len() as u64 > cap {
                    Err(SandboxError::new(
                        ErrorKind::OutputLimit,
                        format!(
                            "the returned value is {} bytes, past the output limit of {cap} bytes",
                            output.len()
                        ),
                    ))
                } else {
                    Ok(output)
                }
            }
            Ok(Err(tool_error)) => Err(match tool_error {
                bindings::ToolError::PermissionDenied(message)
                | bindings::ToolError::InvalidInput(message)
                | bindings::ToolError::Failed(message)
                    if message.len() as u64 > self.policy.limits.max_output =>
                {
                    SandboxError::new(
                        ErrorKind::OutputLimit,
                        format!(
                            "the tool's error message is {} bytes, past the output limit of {} bytes",
                            message.len(),
                            self.policy.limits.max_output
                        ),
                    )
                }
                bindings::ToolError::PermissionDenied(message) => {
                    SandboxError::new(ErrorKind::PermissionDenied, message)
                }
                bindings::ToolError::InvalidInput(message) => {
                    SandboxError::new(ErrorKind::ToolError, format!("invalid input: {message}"))
                }
                bindings::ToolError::Failed(message) => {
                    SandboxError::new(ErrorKind::ToolError, message)
                }
            }),
            Err(err) => Err(err),
        };
        report
    }

    /// Whether the component implements the `actor` world (`on-message`).
    pub fn is_actor(&self) -> bool {
        self.actor.is_some()
    }

    /// Calls `on-message` in a fresh instance under the tool's limits. `Ok` (an empty output)
    /// when the actor handled it, with what it queued in [`CallReport::sent`]; otherwise the
    /// actor's error or the sandbox stop, and nothing to send.
    pub async fn on_message(&self, message: &crate::outcome::ActorMessage) -> CallReport {
        let Some(actor) = &self.actor else {
            return CallReport {
                result: Err(SandboxError::new(
                    ErrorKind::InvalidComponent,
                    "the component does not implement the outpost:guest/actor world (no on-message export)",
                )),
                stdout: String::new(),
                stderr: String::new(),
                logs: Vec::new(),
                logs_dropped: 0,
                fuel_used: None,
                duration: Duration::ZERO,
                sent: Vec::new(),
            };
        };
        let wire = actor_bindings::Message {
            id: message.id,
            sender: message.sender.clone(),
            team: message.team.clone(),
            payload: message.payload.clone(),
        };
        let (result, mut report) = self
            .run(true, async |store| {
                let instance = actor.instantiate_async(&mut *store).await?;
                instance.call_on_message(store, &wire).await
            })
            .await;
        report.result = match result {
            Ok(Ok(())) => Ok(String::new()),
            Ok(Err(message)) => {
                report.sent.clear();
                let cap = usize::try_from(self.policy.limits.max_output).unwrap_or(usize::MAX);
                let mut message = message;
                if message.len() > cap {
                    let mut end = cap;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                }
                Err(SandboxError::new(ErrorKind::ToolError, message))
            }
            Err(err) => Err(err),
        };
        report
    }

    fn wasi_ctx(&self, stdout: &CappedPipe, stderr: &CappedPipe) -> Result<WasiCtx, SandboxError> {
        let policy = &self.policy;
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(stdout.clone()).stderr(stderr.clone());
        builder.envs(&policy.env);
        for grant in &policy.fs {
            let perms = match grant.access {
                FsAccess::ReadOnly => FsPerms::ReadOnly,
                FsAccess::ReadWrite => FsPerms::ReadWrite,
            };
            // Held until WASI has opened its own handle through the pinned path.
            let (_pinned, host) = pin_grant(grant)?;
            builder
                .preopened_dir(&host, &grant.guest, perms)
                .map_err(|err| {
                    SandboxError::new(
                        ErrorKind::PolicyInvalid,
                        format!(
                            "cannot open the granted directory {}: {}",
                            grant.host.display(),
                            error_chain(&err)
                        ),
                    )
                })?;
        }
        let network_allowed = !policy.network.is_empty();
        builder
            .allow_tcp(network_allowed)
            .allow_udp(network_allowed)
            .allow_ip_name_lookup(network_allowed && !policy.lookup_names.is_empty());
        if network_allowed {
            let grants = policy.network.clone();
            builder.socket_addr_check(move |addr, usage| {
                let allowed = match usage {
                    SocketAddrUse::TcpConnect
                    | SocketAddrUse::UdpSend
                    | SocketAddrUse::UdpReceive => grants.iter().any(|grant| grant.allows(&addr)),
                    // Implicit binds before a connect are to the wildcard address; explicit binds,
                    // listening and accepting are not granted by a host list.
                    SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                        addr.ip().is_unspecified() && addr.port() == 0
                    }
                    SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
                };
                Box::pin(async move { allowed })
            });
        }
        Ok(builder.build())
    }

    /// Runs `call` on a fresh instance in a fresh store under the tool's limits, and reports
    /// what it returned (or why it stopped) with everything the call produced.
    async fn run<T>(
        &self,
        with_outbox: bool,
        call: impl AsyncFnOnce(&mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> (Result<T, SandboxError>, CallReport) {
        let limits = self.policy.limits;
        let cap = usize::try_from(limits.max_output).unwrap_or(usize::MAX);
        let stdout = CappedPipe::new("stdout", cap);
        let stderr = CappedPipe::new("stderr", cap);
        let mut report = CallReport {
            result: Ok(String::new()),
            stdout: String::new(),
            stderr: String::new(),
            logs: Vec::new(),
            logs_dropped: 0,
            fuel_used: None,
            duration: Duration::ZERO,
            sent: Vec::new(),
        };
        let wasi = match self.wasi_ctx(&stdout, &stderr) {
            Ok(wasi) => wasi,
            Err(err) => return (Err(err), report),
        };
        let inner = &self.sandbox.inner;
        let Ok(_slot) = inner.slots.acquire().await else {
            return (
                Err(SandboxError::new(
                    ErrorKind::Trap,
                    "the sandbox is shutting down",
                )),
                report,
            );
        };
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let state = CallState {
            wasi,
            table,
            limiter: CallLimiter {
                memory_limit: usize::try_from(limits.memory).unwrap_or(usize::MAX),
                memory_total: 0,
                hit: None,
            },
            logs: LogBuffer {
                records: Vec::new(),
                bytes: 0,
                cap,
                dropped: 0,
            },
            disk: DiskQuota::new(limits.disk_write, limits.files_created),
            policy: self.policy.clone(),
            outbox: with_outbox.then(Outbox::default),
        };
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        let budget = match limits.fuel {
            Fuel::Limited(n) => n,
            Fuel::Unlimited => u64::MAX,
        };
        if inner.config.fuel_metering
            && let Err(err) = store.set_fuel(budget)
        {
            return (Err(internal("cannot set fuel", err)), report);
        }
        if inner.config.epoch_interruption {
            let tick = inner.config.epoch_tick.as_nanos().max(1);
            let ticks = limits.timeout.as_nanos().div_ceil(tick) + 1;
            store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
            store.epoch_deadline_trap();
        }
        let started = Instant::now();
        let call = call(&mut store);
        // The epoch deadline stops busy guests; this timer also stops a guest blocked in a host
        // call (a long sleep, a read that never ends), one tick later.
        let hard_limit = limits.timeout + inner.config.epoch_tick * 2;
        let outcome = tokio::time::timeout(hard_limit, call).await;
        report.duration = started.elapsed();
        let result = match outcome {
            Ok(Ok(finished)) => Ok(finished),
            Ok(Err(err)) => Err(classify(&err, &store, &stdout, &stderr, limits, budget)),
            Err(_) => Err(timeout_error(limits.timeout)),
        };
        if inner.config.fuel_metering {
            report.fuel_used = store
                .get_fuel()
                .ok()
                .map(|left| budget.saturating_sub(left));
        }
        let mut state = store.into_data();
        if let Some(notice) = state.disk.reached() {
            state.logs.records.push(LogRecord {
                level: LogLevel::Warn,
                message: notice,
            });
        }
        report.stdout = stdout.text();
        report.stderr = stderr.text();
        report.logs = state.logs.records;
        report.logs_dropped = state.logs.dropped;
        // What was queued counts only when the call succeeded.
        if result.is_ok() {
            report.sent = state.outbox.map(|o| o.messages).unwrap_or_default();
        }
        (result, report)
    }
}

fn timeout_error(timeout: Duration) -> SandboxError {
    SandboxError::new(
        ErrorKind::Timeout,
        format!(
            "the call ran past its wall-time limit of {}",
            humantime::format_duration(timeout)
        ),
    )
}

/// Turns a failed call into the kind that explains it, most specific first.
fn classify(
    err: &wasmtime::Error,
    store: &Store<CallState>,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
    limits: super::policy::Limits,
    budget: u64,
) -> SandboxError {
    if let Some(hit) = &store.data().limiter.hit {
        return SandboxError::new(ErrorKind::MemoryLimit, hit.clone());
    }
    if let Some(exceeded) = err.downcast_ref::<OutputLimitExceeded>() {
        return SandboxError::new(ErrorKind::OutputLimit, exceeded.to_string());
    }
    if let Some(exceeded) = stdout.overflow().or_else(|| stderr.overflow()) {
        return SandboxError::new(ErrorKind::OutputLimit, exceeded.to_string());
    }
    if let Some(wasmtime::component::ResourceTableError::Full) =
        err.downcast_ref::<wasmtime::component::ResourceTableError>()
    {
        return SandboxError::new(
            ErrorKind::MemoryLimit,
            format!(
                "the call holds the most handles it may: {MAX_HANDLES} open files, directories, streams and sockets at once"
            ),
        );
    }
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return SandboxError::new(
            ErrorKind::Trap,
            format!(
                "the tool called exit (status {}) instead of returning",
                exit.0
            ),
        );
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => SandboxError::new(
                ErrorKind::OutOfFuel,
                format!("the call used its whole fuel budget of {budget}"),
            ),
            Trap::Interrupt => timeout_error(limits.timeout),
            Trap::StackOverflow => SandboxError::new(
                ErrorKind::Trap,
                "wasm trap: call stack exhausted (runaway recursion)",
            ),
            other => {
                let mut message = other.to_string();
                if *other == Trap::MemoryOutOfBounds {
                    message.push_str(
                        " (in tools built from Rust or C this is also how a shadow-stack overflow, \
                         i.e. runaway recursion, ends)",
                    );
                }
                let panic = stderr.text();
                let panic = panic.trim();
                if !panic.is_empty() {
                    let start = panic.char_indices().rev().nth(399).map_or(0, |(i, _)| i);
                    let tail = &panic[start..];
                    message.push_str(&format!("; the tool's stderr ends with: {tail}"));
                }
                SandboxError::new(ErrorKind::Trap, message)
            }
        };
    }
    SandboxError::new(ErrorKind::Trap, cause_first(err))
}

/// An error's root cause first, then (on one line, at most 400 characters) the context it was
/// raised in, such as a wasm backtrace: what went wrong reads before where.
fn cause_first(err: &wasmtime::Error) -> String {
    let parts: Vec<String> = err.chain().map(|cause| cause.to_string()).collect();
    let Some((root, context)) = parts.split_last() else {
        return String::new();
    };
    if context.is_empty() {
        return root.clone();
    }
    let context = context
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut end = context.len().min(400);
    while !context.is_char_boundary(end) {
        end -= 1;
    }
    format!("{root} (in: {})", &context[..end])
}

/// Opens a granted directory once and checks that the directory opened is the one the policy
/// resolved (its real path, read back from the open handle); returns the handle and a path that
/// names the handle itself (`/proc/self/fd/N`). Opening that path opens the same directory, so
/// a rename or symlink swap between the policy's check and WASI's open cannot redirect the
/// grant: a swap before the open is seen and refused, one after it changes nothing.
#[cfg(target_os = "linux")]
fn pin_grant(grant: &ResolvedGrant) -> Result<(Option<std::fs::File>, PathBuf), SandboxError> {
    use std::os::fd::AsRawFd as _;
    let refused = |why: String| {
        SandboxError::new(
            ErrorKind::PolicyInvalid,
            format!(
                "cannot open the granted directory {}: {why}",
                grant.host.display()
            ),
        )
    };
    let dir = std::fs::File::open(&grant.host).map_err(|err| refused(err.to_string()))?;
    let handle = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let opened = std::fs::read_link(&handle).map_err(|err| refused(err.to_string()))?;
    if opened != grant.host {
        return Err(refused(format!(
            "it changed while it was being opened (it is {} now); refused",
            opened.display()
        )));
    }
    let is_dir = dir
        .metadata()
        .map_err(|err| refused(err.to_string()))?
        .is_dir();
    if !is_dir {
        return Err(refused("it is not a directory now".into()));
    }
    Ok((Some(dir), handle))
}

/// Elsewhere the grant is opened by its resolved path.
#[cfg(not(target_os = "linux"))]
fn pin_grant(grant: &ResolvedGrant) -> Result<(Option<std::fs::File>, PathBuf), SandboxError> {
    Ok((None, grant.host.clone()))
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn a_host_glue_failure_names_its_cause_first() {
        let err = wasmtime::Error::msg("resource table has no free entries")
            .context("error while executing at wasm backtrace:\n    0: 0x1234 - hostile!open\n    1: 0x5678 - hostile!invoke");
        assert_eq!(
            cause_first(&err),
            "resource table has no free entries (in: error while executing at wasm backtrace: 0: 0x1234 - hostile!open 1: 0x5678 - hostile!invoke)"
        );
        assert_eq!(cause_first(&wasmtime::Error::msg("plain")), "plain");
    }
}
