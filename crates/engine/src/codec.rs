//! Serialization of Meridian's own physical operators, so that a plan made by
//! [`crate::build_session`] can be shipped to another process (a Ballista executor) and
//! run there unchanged.
//!
//! DataFusion's protobuf format carries the standard operators, the Parquet scans of HATS
//! catalogs and calls to the session's UDFs (by name, resolved against the decoding
//! session's registry). What it cannot know are the cross-match operators: [`MeridianCodec`]
//! encodes [`XMatchExec`] and [`ZoneExec`] each as one protobuf message of its parameters
//! (and output schema) and its position expressions.

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::{PhysicalExprNode, Schema as SchemaProto};
use prost::Message;

use crate::xmatch::{Mode, XMatchExec};
use crate::zones::ZoneExec;

/// The wire form of an [`XMatchExec`].
#[derive(Clone, PartialEq, prost::Message)]
struct XMatchProto {
    /// The operator this message describes; checked on decoding.
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(double, tag = "2")]
    radius_deg: f64,
    #[prost(bool, tag = "3")]
    nearest: bool,
    #[prost(bool, tag = "4")]
    build_left: bool,
    /// (ra, dec) over the left input's schema.
    #[prost(message, repeated, tag = "5")]
    left_pos: Vec<PhysicalExprNode>,
    /// (ra, dec) over the right input's schema.
    #[prost(message, repeated, tag = "6")]
    right_pos: Vec<PhysicalExprNode>,
    #[prost(message, optional, tag = "7")]
    schema: Option<SchemaProto>,
    #[prost(bool, tag = "8")]
    zoned: bool,
}

/// The wire form of a [`ZoneExec`].
#[derive(Clone, PartialEq, prost::Message)]
struct ZoneProto {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(double, tag = "2")]
    radius_deg: f64,
    #[prost(bool, tag = "3")]
    margin: bool,
    /// (ra, dec) over the input's schema.
    #[prost(message, repeated, tag = "4")]
    pos: Vec<PhysicalExprNode>,
}

/// Only the kind of a message, to choose how to read the rest.
#[derive(Clone, PartialEq, prost::Message)]
struct KindProto {
    #[prost(string, tag = "1")]
    kind: String,
}

const XMATCH_KIND: &str = "meridian.XMatchExec.v1";
const ZONE_KIND: &str = "meridian.ZoneExec.v1";

/// Whether [`MeridianCodec`] encodes `node` (one of Meridian's own operators).
pub fn is_meridian_operator(node: &dyn ExecutionPlan) -> bool {
    node.downcast_ref::<XMatchExec>().is_some() || node.downcast_ref::<ZoneExec>().is_some()
}

/// The extension codec of every Meridian session (see the module documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct MeridianCodec;

fn codec_err(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(format!("Meridian plan codec: {}", msg.into()))
}

impl PhysicalExtensionCodec for MeridianCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let kind = KindProto::decode(buf).map_err(|e| codec_err(e.to_string()))?;
        let pos = |nodes: &[PhysicalExprNode],
                   input: &Arc<dyn ExecutionPlan>|
         -> Result<[Arc<dyn PhysicalExpr>; 2]> {
            let exprs = nodes
                .iter()
                .map(|n| parse_physical_expr(n, ctx, &input.schema(), self))
                .collect::<Result<Vec<_>>>()?;
            exprs
                .try_into()
                .map_err(|_| codec_err("a position takes 2 expressions"))
        };
        match kind.kind.as_str() {
            XMATCH_KIND => {}
            ZONE_KIND => {
                let msg = ZoneProto::decode(buf).map_err(|e| codec_err(e.to_string()))?;
                let [input] = inputs else {
                    return Err(codec_err(format!(
                        "ZoneExec takes 1 input, got {}",
                        inputs.len()
                    )));
                };
                return Ok(Arc::new(ZoneExec::try_new(
                    input.clone(),
                    pos(&msg.pos, input)?,
                    msg.radius_deg,
                    msg.margin,
                )?));
            }
            other => return Err(codec_err(format!("unknown operator '{other}'"))),
        }
        let msg = XMatchProto::decode(buf).map_err(|e| codec_err(e.to_string()))?;
        let [left, right] = inputs else {
            return Err(codec_err(format!(
                "XMatchExec takes 2 inputs, got {}",
                inputs.len()
            )));
        };
        let schema = msg
            .schema
            .as_ref()
            .ok_or_else(|| codec_err("XMatchExec without a schema"))?;
        let schema = arrow::datatypes::Schema::try_from(schema)?;
        Ok(Arc::new(XMatchExec::new(
            left.clone(),
            right.clone(),
            pos(&msg.left_pos, left)?,
            pos(&msg.right_pos, right)?,
            msg.radius_deg,
            if msg.nearest {
                Mode::Nearest
            } else {
                Mode::All
            },
            msg.build_left,
            msg.zoned,
            Arc::new(schema),
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let exprs = |pos: &[Arc<dyn PhysicalExpr>; 2]| {
            pos.iter()
                .map(|e| proto_converter.physical_expr_to_proto(e, self))
                .collect::<Result<Vec<_>>>()
        };
        if let Some(z) = node.downcast_ref::<ZoneExec>() {
            let msg = ZoneProto {
                kind: ZONE_KIND.to_string(),
                radius_deg: z.radius_deg,
                margin: z.margin,
                pos: exprs(&z.pos)?,
            };
            return msg.encode(buf).map_err(|e| codec_err(e.to_string()));
        }
        let Some(x) = node.downcast_ref::<XMatchExec>() else {
            return Err(codec_err(format!("cannot encode operator {}", node.name())));
        };
        let msg = XMatchProto {
            kind: XMATCH_KIND.to_string(),
            radius_deg: x.radius_deg,
            nearest: x.mode == Mode::Nearest,
            build_left: x.build_left,
            left_pos: exprs(&x.left_pos)?,
            right_pos: exprs(&x.right_pos)?,
            schema: Some(SchemaProto::try_from(x.schema().as_ref())?),
            zoned: x.zoned,
        };
        msg.encode(buf).map_err(|e| codec_err(e.to_string()))
    }
}

/// A physical plan of a Meridian session as bytes (DataFusion's protobuf format with
/// [`MeridianCodec`]).
pub fn plan_to_bytes(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<u8>> {
    Ok(
        datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(plan, &MeridianCodec)?
            .to_vec(),
    )
}

/// The physical plan encoded by [`plan_to_bytes`], ready to run in `ctx` (a task context of
/// a session made by [`crate::build_session`], which knows Meridian's functions).
pub fn plan_from_bytes(bytes: &[u8], ctx: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
        bytes,
        ctx,
        &MeridianCodec,
    )
}
