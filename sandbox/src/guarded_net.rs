//! `wasi:sockets/ip-name-lookup` as the node serves it: wasmtime-wasi's, with lookups limited to
//! the names the tool's policy grants. Any other name is refused (`access-denied`) before it
//! reaches the node's resolver, so a tool cannot carry data out in the names it looks up.

use std::sync::Arc;

use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

/// Marks the linker type for [`add_to_linker`]'s getter.
pub(crate) struct GuardedLookup;

impl wasmtime::component::HasData for GuardedLookup {
    type Data<'a> = GuardedLookupView<'a>;
}

/// wasmtime-wasi's sockets view and the names the call may look up.
pub(crate) struct GuardedLookupView<'a> {
    pub(crate) inner: WasiSocketsCtxView<'a>,
    pub(crate) names: &'a Arc<crate::policy::ResolvedPolicy>,
}

// The lookup interface uses `network`'s types, so its host traits come along; both pass through.
impl network::Host for GuardedLookupView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.inner, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.inner, err)
    }
}

impl network::HostNetwork for GuardedLookupView<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.inner, this)
    }
}

impl ip_name_lookup::Host for GuardedLookupView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        if !self.names.may_look_up(&name) {
            return Err(ErrorCode::AccessDenied.into());
        }
        // The resolver is asked exactly the granted name (in its normal form).
        let name = crate::policy::normalise_name(&name);
        ip_name_lookup::Host::resolve_addresses(&mut self.inner, network, name)
    }
}

impl HostResolveAddressStream for GuardedLookupView<'_> {
    fn resolve_next_address(
        &mut self,
        resource: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        self.inner.resolve_next_address(resource)
    }

    fn subscribe(
        &mut self,
        resource: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.inner, resource)
    }

    fn drop(&mut self, resource: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        HostResolveAddressStream::drop(&mut self.inner, resource)
    }
}

/// Links the guarded `wasi:sockets/ip-name-lookup` over the one wasmtime-wasi linked.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    getter: fn(&mut T) -> GuardedLookupView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = ip_name_lookup::add_to_linker::<T, GuardedLookup>(linker, getter);
    linker.allow_shadowing(false);
    linked
}
