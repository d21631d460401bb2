//! `#[derive(Schema)]`: a config struct's JSON Schema from its own definition, so the schema
//! `fastgate schema` prints cannot drift from what the parser reads.
//!
//! For a struct with named fields it writes `impl crate::model::schema::Schema`: an object whose
//! properties are the fields (`r#match` is `match`), each described by its doc comment, with
//! its type's own schema. A field is required unless it is an `Option` or `#[serde(default)]`.
//! `#[schema(default = LIT)]` and `#[schema(example = LIT)]` (repeatable) add a default and
//! examples, `#[schema(example_toml = "{ count = 100, per = \"1s\" }")]` an example no Rust
//! literal can write; `#[schema(flatten)]` merges a field's own properties into the object (a route's
//! policy keys). Every table the routes file has denies unknown keys, and so does the schema.

use proc_macro::TokenStream;
use quote::quote;
use syn::{Attribute, Data, DeriveInput, Expr, ExprLit, Fields, Lit, Meta, Type, parse_macro_input};

#[proc_macro_derive(Schema, attributes(schema))]
pub fn derive_schema(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(input, "Schema is derived for structs only"));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(input, "Schema is derived for structs with named fields"));
    };
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let doc = doc_of(&input.attrs);
    let mut props = Vec::new();
    for f in &fields.named {
        let Some(ident) = &f.ident else { continue };
        let key = ident.to_string().trim_start_matches("r#").to_string();
        let ty = &f.ty;
        let attrs = SchemaAttrs::read(&f.attrs)?;
        if attrs.flatten {
            props.push(quote! { __o.flatten(<#ty as crate::model::schema::Schema>::schema()); });
            continue;
        }
        let fdoc = doc_of(&f.attrs);
        let required = !is_option(ty) && !serde_default(&f.attrs);
        let default = match &attrs.default {
            Some(lit) => quote! { Some(crate::model::schema::lit(#lit)) },
            None => quote! { None },
        };
        let examples = &attrs.examples;
        props.push(quote! {
            __o.property(#key, #fdoc, <#ty as crate::model::schema::Schema>::schema(), #required, #default,
                vec![ #( #examples ),* ]);
        });
    }
    Ok(quote! {
        impl #impl_generics crate::model::schema::Schema for #name #ty_generics #where_clause {
            fn schema() -> serde_json::Value {
                let mut __o = crate::model::schema::Object::new(#doc);
                #( #props )*
                __o.into_value()
            }
        }
    })
}

/// The doc comment's lines joined into paragraphs: lines of one paragraph with a space,
/// paragraphs with a blank line.
fn doc_of(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs {
        if !a.path().is_ident("doc") {
            continue;
        }
        if let Meta::NameValue(nv) = &a.meta
            && let Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) = &nv.value
        {
            lines.push(s.value().trim().to_string());
        }
    }
    let mut out = String::new();
    for line in lines {
        if line.is_empty() {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push_str("\n\n");
            }
        } else {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push(' ');
            }
            out.push_str(&line);
        }
    }
    out.trim_end().to_string()
}

fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

fn serde_default(attrs: &[Attribute]) -> bool {
    attrs.iter().filter(|a| a.path().is_ident("serde")).any(|a| {
        let mut found = false;
        let _ = a.parse_nested_meta(|m| {
            if m.path.is_ident("default") {
                found = true;
            }
            if m.input.peek(syn::Token![=]) {
                let _: Expr = m.value()?.parse()?;
            }
            Ok(())
        });
        found
    })
}

#[derive(Default)]
struct SchemaAttrs {
    flatten: bool,
    default: Option<Lit>,
    examples: Vec<proc_macro2::TokenStream>,
}

impl SchemaAttrs {
    fn read(attrs: &[Attribute]) -> syn::Result<SchemaAttrs> {
        let mut out = SchemaAttrs::default();
        for a in attrs.iter().filter(|a| a.path().is_ident("schema")) {
            a.parse_nested_meta(|m| {
                if m.path.is_ident("flatten") {
                    out.flatten = true;
                } else if m.path.is_ident("default") {
                    out.default = Some(m.value()?.parse()?);
                } else if m.path.is_ident("example") {
                    let lit: Lit = m.value()?.parse()?;
                    out.examples.push(quote! { crate::model::schema::lit(#lit) });
                } else if m.path.is_ident("example_toml") {
                    let lit: syn::LitStr = m.value()?.parse()?;
                    out.examples.push(quote! { crate::model::schema::toml_lit(#lit) });
                } else {
                    return Err(m.error("expected `flatten`, `default = LIT`, `example = LIT` or `example_toml = \"TOML value\"`"));
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}
