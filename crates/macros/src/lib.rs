//! The `#[yukicomm::service]` attribute. Use it through the `yukicomm` crate, which
//! documents it (`yukicomm::service`); the code it generates names `::yukicomm` paths.
//!
//! On a trait, it makes the trait a service: every method must be `async`, take `&self`
//! and arguments by name, with serde types; it generates `NameClient` (async calls),
//! `NameBlockingClient` (blocking calls) and `NameServer<T>` (serves any `T: Name`).
//! On an `impl` of such a trait, it also lets the implementing type be served as it is.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, FnArg, GenericArgument, Ident, Item, ItemImpl, ItemTrait, Pat,
    PathArguments, ReturnType, TraitItem, Type,
};

/// Makes a trait a yukicomm service, or lets the type of an `impl` of one be served
/// as it is. See the `yukicomm` crate's documentation of `service`.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = Tokens::from(attr);
        return syn::Error::new(attr.span(), "#[yukicomm::service] takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = parse_macro_input!(item as Item);
    let out = match item {
        Item::Trait(t) => service_trait(t),
        Item::Impl(i) => service_impl(i),
        other => Err(syn::Error::new(
            other.span(),
            "#[yukicomm::service] goes on a trait, or on an `impl` of a service trait",
        )),
    };
    out.unwrap_or_else(syn::Error::into_compile_error).into()
}

/// One method of a service trait.
struct Method {
    name: Ident,
    attrs: Vec<syn::Attribute>,
    args: Vec<(Ident, Type)>,
    /// The result type, and the service's error type when it returns a `Result`.
    output: Type,
    ok: Type,
    err: Option<Type>,
}

fn error(span: impl Spanned, message: &str) -> syn::Error {
    syn::Error::new(span.span(), message)
}

/// `Result<T, E>` (by its last path segment) gives `(T, Some(E))`.
fn split_result(ty: &Type) -> (Type, Option<Type>) {
    if let Type::Path(p) = ty {
        if let Some(last) = p.path.segments.last() {
            if last.ident == "Result" {
                if let PathArguments::AngleBracketed(args) = &last.arguments {
                    let types: Vec<&Type> = args
                        .args
                        .iter()
                        .filter_map(|a| match a {
                            GenericArgument::Type(t) => Some(t),
                            _ => None,
                        })
                        .collect();
                    if let [ok, err] = types[..] {
                        return (ok.clone(), Some(err.clone()));
                    }
                }
            }
        }
    }
    (ty.clone(), None)
}

fn method(item: &TraitItem) -> syn::Result<Method> {
    let TraitItem::Fn(f) = item else {
        return Err(error(
            item,
            "a service trait holds only `async fn` methods (no types, constants or macros)",
        ));
    };
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(error(sig.fn_token, "service methods must be `async fn`"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(error(&sig.generics, "service methods cannot be generic"));
    }
    if let Some(v) = &sig.variadic {
        return Err(error(v, "service methods cannot be variadic"));
    }
    if f.default.is_some() {
        return Err(error(
            &f.default,
            "service methods cannot have a default body: implement them for the server type",
        ));
    }
    let name = sig.ident.clone();
    if name.to_string().len() > 255 {
        return Err(error(&sig.ident, "method names are at most 255 bytes"));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(other) => {
            return Err(error(
                other,
                "service methods take `&self` (the server may run many calls at once)",
            ))
        }
        None => return Err(error(&sig.ident, "service methods take `&self`")),
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(pt) = input else {
            return Err(error(input, "`self` comes first"));
        };
        let Pat::Ident(pi) = &*pt.pat else {
            return Err(error(
                &pt.pat,
                "service method arguments must be plain names (`text: String`)",
            ));
        };
        if pi.by_ref.is_some() || pi.subpat.is_some() {
            return Err(error(
                &pt.pat,
                "service method arguments must be plain names",
            ));
        }
        if let Type::Reference(r) = &*pt.ty {
            return Err(error(
                r,
                "service method arguments are owned values that travel between processes: \
                 take `String`, not `&str`, and so on",
            ));
        }
        if let Type::ImplTrait(t) = &*pt.ty {
            return Err(error(
                t,
                "service method arguments need concrete serde types",
            ));
        }
        args.push((pi.ident.clone(), (*pt.ty).clone()));
    }
    let output: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => {
            if let Type::ImplTrait(t) = &**t {
                return Err(error(t, "service methods return a concrete serde type"));
            }
            if let Type::Reference(r) = &**t {
                return Err(error(r, "service methods return owned values"));
            }
            (**t).clone()
        }
    };
    let (ok, err) = split_result(&output);
    Ok(Method {
        name,
        attrs: f.attrs.clone(),
        args,
        output,
        ok,
        err,
    })
}

fn service_trait(t: ItemTrait) -> syn::Result<Tokens> {
    if !t.generics.params.is_empty() || t.generics.where_clause.is_some() {
        return Err(error(&t.generics, "a service trait cannot be generic"));
    }
    if let Some(unsafety) = &t.unsafety {
        return Err(error(unsafety, "a service trait cannot be unsafe"));
    }
    let methods = t
        .items
        .iter()
        .map(method)
        .collect::<syn::Result<Vec<_>>>()?;
    let vis = &t.vis;
    let name = &t.ident;
    let attrs = &t.attrs;
    let supertraits = &t.supertraits;
    let plus = if supertraits.is_empty() {
        quote!()
    } else {
        quote!(+)
    };
    let client = format_ident!("{}Client", name);
    let blocking = format_ident!("{}BlockingClient", name);
    let server = format_ident!("{}Server", name);
    let y = quote!(::yukicomm::service);

    let trait_methods = methods.iter().map(|m| {
        let Method {
            name,
            attrs,
            args,
            output,
            ..
        } = m;
        let params = args.iter().map(|(n, t)| quote!(#n: #t));
        quote! {
            #(#attrs)*
            fn #name(&self, #(#params),*) -> impl ::std::future::Future<Output = #output> + ::std::marker::Send;
        }
    });

    let args_value = |m: &Method| -> Tokens {
        let names = m.args.iter().map(|(n, _)| n);
        match m.args.len() {
            0 => quote!(&[(); 0]),
            _ => quote!(&(#(&#names,)*)),
        }
    };

    let client_methods = methods.iter().map(|m| {
        let Method {
            name,
            attrs,
            args,
            ok,
            err,
            ..
        } = m;
        let params = args.iter().map(|(n, t)| quote!(#n: #t));
        let wire = name.to_string();
        let value = args_value(m);
        let fut = match err {
            Some(e) => quote!(#y::CallFuture<#ok, #e>),
            None => quote!(#y::CallFuture<#ok>),
        };
        quote! {
            #(#attrs)*
            ///
            /// Sent at once; the future resolves with the result. Dropping it first
            /// cancels the call at the server.
            pub fn #name(&self, #(#params),*) -> #fut {
                self.inner.call(#wire, #value)
            }
        }
    });

    let blocking_methods = methods.iter().map(|m| {
        let Method {
            name,
            attrs,
            args,
            ok,
            err,
            ..
        } = m;
        let params = args.iter().map(|(n, t)| quote!(#n: #t));
        let wire = name.to_string();
        let value = args_value(m);
        let (result, e) = match err {
            Some(e) => (
                quote!(::std::result::Result<#ok, #y::CallError<#e>>),
                quote!(#e),
            ),
            None => (
                quote!(::std::result::Result<#ok, #y::CallError>),
                quote!(#y::NoError),
            ),
        };
        quote! {
            #(#attrs)*
            ///
            /// Waits on this thread for the result.
            pub fn #name(&self, #(#params),*) -> #result {
                self.inner.call_blocking::<_, #ok, #e>(#wire, #value)
            }
        }
    });

    let arms = methods.iter().map(|m| {
        let Method {
            name, args, err, ..
        } = m;
        let wire = name.to_string();
        let names: Vec<&Ident> = args.iter().map(|(n, _)| n).collect();
        let types: Vec<&Type> = args.iter().map(|(_, t)| t).collect();
        let decode = if args.is_empty() {
            quote!()
        } else {
            quote! {
                let (#(#names,)*) = match #y::decode_args::<(#(#types,)*)>(#wire, &args) {
                    ::std::result::Result::Ok(a) => a,
                    ::std::result::Result::Err(o) => {
                        return ::std::option::Option::Some(::std::boxed::Box::pin(async move { o }));
                    }
                };
            }
        };
        let outcome = if err.is_some() {
            quote!(#y::Outcome::result(&r))
        } else {
            quote!(#y::Outcome::ok(&r))
        };
        let span = name.span();
        quote_spanned! {span=>
            #wire => {
                #decode
                ::std::option::Option::Some(::std::boxed::Box::pin(async move {
                    let r = this.#name(#(#names),*).await;
                    #outcome
                }))
            }
        }
    });

    let doc_client = format!(
        "Calls the [`{name}`] service from any process: async methods (see \
         [`{blocking}`] for blocking ones). Cheap to clone."
    );
    let doc_blocking = format!("Calls the [`{name}`] service, waiting on the calling thread.");
    let doc_server = format!(
        "Serves the [`{name}`] service with any `T: {name}`: \
         `node.serve(\"name\", {server}::new(value))`."
    );

    Ok(quote! {
        #(#attrs)*
        #vis trait #name: #supertraits #plus ::std::marker::Send + ::std::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #[doc = #doc_client]
        #[derive(Clone, Debug)]
        #vis struct #client {
            inner: #y::ServiceClient,
        }

        impl #client {
            /// A client of the service served under `name`; its calls wait the
            /// default timeout and fail at once when nobody serves the name.
            pub fn new(node: &::yukicomm::Node, name: &str) -> Self {
                #client { inner: #y::ServiceClient::new(node, name) }
            }

            /// The same client, whose calls wait `timeout` for their reply.
            #[must_use]
            pub fn with_timeout(&self, timeout: ::std::time::Duration) -> Self {
                #client { inner: self.inner.with_timeout(timeout) }
            }

            /// The same client, whose calls wait (within their deadline) for a
            /// process to serve the name when none does.
            #[must_use]
            pub fn waiting_for_server(&self) -> Self {
                #client { inner: self.inner.waiting_for_server() }
            }

            /// The same calls, waiting on the calling thread.
            pub fn blocking(&self) -> #blocking {
                #blocking { inner: self.inner.clone() }
            }

            /// The untyped client underneath.
            pub fn service_client(&self) -> &#y::ServiceClient {
                &self.inner
            }

            #(#client_methods)*
        }

        #[doc = #doc_blocking]
        #[derive(Clone, Debug)]
        #vis struct #blocking {
            inner: #y::ServiceClient,
        }

        impl #blocking {
            #(#blocking_methods)*
        }

        #[doc = #doc_server]
        #vis struct #server<T>(::std::sync::Arc<T>);

        impl<T: #name> #server<T> {
            /// Serves with `service`.
            pub fn new(service: T) -> Self {
                #server(::std::sync::Arc::new(service))
            }

            /// Serves with a shared `service`.
            pub fn from_arc(service: ::std::sync::Arc<T>) -> Self {
                #server(service)
            }

            #[doc(hidden)]
            pub fn __dispatch(
                this: ::std::sync::Arc<T>,
                method: &str,
                args: #y::Bytes,
            ) -> ::std::option::Option<#y::BoxCall> {
                let _ = &args;
                match method {
                    #(#arms)*
                    _ => ::std::option::Option::None,
                }
            }
        }

        impl<T: #name> #y::Service for #server<T> {
            fn call(
                self: ::std::sync::Arc<Self>,
                method: &str,
                args: #y::Bytes,
            ) -> ::std::option::Option<#y::BoxCall> {
                Self::__dispatch(self.0.clone(), method, args)
            }
        }
    })
}

fn service_impl(i: ItemImpl) -> syn::Result<Tokens> {
    let Some((bang, path, _)) = &i.trait_ else {
        return Err(error(
            &i.self_ty,
            "#[yukicomm::service] goes on an `impl` of a service trait, not an inherent `impl`",
        ));
    };
    if let Some(bang) = bang {
        return Err(error(bang, "a negative impl cannot serve"));
    }
    let mut server = path.clone();
    let Some(last) = server.segments.last_mut() else {
        return Err(error(path, "expected the service trait's name"));
    };
    last.ident = format_ident!("{}Server", last.ident);
    last.arguments = PathArguments::None;
    let ty = &i.self_ty;
    let (impl_generics, _, where_clause) = i.generics.split_for_impl();
    let y = quote!(::yukicomm::service);
    let span = Span::call_site();
    Ok(quote_spanned! {span=>
        #i

        impl #impl_generics #y::Service for #ty #where_clause {
            fn call(
                self: ::std::sync::Arc<Self>,
                method: &str,
                args: #y::Bytes,
            ) -> ::std::option::Option<#y::BoxCall> {
                #server::<Self>::__dispatch(self, method, args)
            }
        }
    })
}
