fn main() {
    shopmesh_protogen::compile(&["shopmesh/inventory/v1/inventory.proto"], false);
}
