package hostnet

import "fmt"

// What the tests of package hostnet_test, which import plan, read of
// this package's insides.
var ListLinks, ListRoutes, RoutesOf = listLinks, listRoutes, routesOf

type Route = route

// ShowRoute has every field of r, as the test writes netlink's routes.
func ShowRoute(r Route) string {
	return fmt.Sprintf("family %d table %d type %d proto %d dst %v gw %v dev %d", r.family, r.table, r.typ, r.proto, r.dst, r.gw, r.link)
}
