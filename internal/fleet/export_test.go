package fleet

import "context"

// Wait is wait, for the tests of package fleet_test (which import
// fleettest, which imports fleet).
func (m *Member) Wait(ctx context.Context, rev int64) { m.wait(ctx, rev) }
