fn main() {
    shopmesh_protogen::compile(&["shopmesh/common/v1/common.proto", "shopmesh/events/v1/events.proto"], true);
}
