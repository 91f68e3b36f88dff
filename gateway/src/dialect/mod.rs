//! Client dialects: APIs other than OpenAI's chat completions that clients speak to the
//! gateway, served on the same typed exchange (a `Call` down, a `Reply` up), through the
//! same layers (keys, limits, meter, router) as chat.
//!
//! - [`anthropic`]: Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`),
//!   as Claude Code and the Anthropic SDKs speak it. Anthropic deployments get the body as
//!   it came; every other deployment gets it translated to chat completions and back
//!   ([`anthropic::bridge`], driven by `providers::bridge`).
//!
//! A dialect owns three things: checking its request bodies into a `Call` (its
//! `Endpoint` says which dialect the body and the answer are in), the shape of its errors
//! (rewritten once at the edge, [`anthropic::Errors`]), and the translation to and from
//! chat completions for deployments that do not speak it.

pub mod anthropic;
pub mod responses;
