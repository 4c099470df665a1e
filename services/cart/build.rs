fn main() {
    shopmesh_protogen::compile(&["shopmesh/cart/v1/cart.proto"], false);
}
