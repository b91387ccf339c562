package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RootUser is etcd's administrator: the common name of the admin's
// certificate.
const RootUser = "root"

// HostRole is the role of host's etcd user.
func HostRole(host string) string { return "host-" + host }

// SetupAuth makes etcd enforce who writes what (docs/fleet.md): the user
// root (the admin), and for each host a user of its name whose role may
// read all of Prefix and write only HostPrefix(host); then it turns
// authentication on. Users have no password: etcd takes the user from the
// client certificate's common name. A host's role is set to exactly these
// permissions, whatever it had. Run it as root (or before authentication is
// on); running it again changes nothing, or adds the hosts that are new.
func SetupAuth(ctx context.Context, cli *clientv3.Client, hosts []string) error {
	if err := addUser(ctx, cli, RootUser, RootUser); err != nil {
		return err
	}
	for _, h := range hosts {
		role := HostRole(h)
		if err := addRole(ctx, cli, role); err != nil {
			return err
		}
		want := []*authpb.Permission{
			{PermType: authpb.READ, Key: []byte(Prefix), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(Prefix))},
			{PermType: authpb.READWRITE, Key: []byte(HostPrefix(h)), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(HostPrefix(h)))},
		}
		got, err := cli.RoleGet(ctx, role)
		if err != nil {
			return fmt.Errorf("reading etcd role %s: %w", role, err)
		}
		for _, p := range got.Perm {
			if !slices.ContainsFunc(want, func(w *authpb.Permission) bool { return samePerm(p, w) }) {
				if _, err := cli.RoleRevokePermission(ctx, role, string(p.Key), string(p.RangeEnd)); err != nil {
					return fmt.Errorf("revoking %s's permission on %q: %w", role, p.Key, err)
				}
			}
		}
		for _, w := range want {
			if slices.ContainsFunc(got.Perm, func(p *authpb.Permission) bool { return samePerm(p, w) }) {
				continue
			}
			if _, err := cli.RoleGrantPermission(ctx, role, string(w.Key), string(w.RangeEnd), clientv3.PermissionType(w.PermType)); err != nil {
				return fmt.Errorf("granting %s %s on %q: %w", role, w.PermType, w.Key, err)
			}
		}
		if err := addUser(ctx, cli, h, role); err != nil {
			return err
		}
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enabling etcd's authentication: %w", err)
	}
	return nil
}

func samePerm(a, b *authpb.Permission) bool {
	return a.PermType == b.PermType && string(a.Key) == string(b.Key) && string(a.RangeEnd) == string(b.RangeEnd)
}

func addRole(ctx context.Context, cli *clientv3.Client, role string) error {
	if _, err := cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("adding etcd role %s: %w", role, err)
	}
	return nil
}

// addUser adds user, without a password, with role (made unless it
// exists), unless it has it.
func addUser(ctx context.Context, cli *clientv3.Client, user, role string) error {
	if err := addRole(ctx, cli, role); err != nil {
		return err
	}
	_, err := cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("adding etcd user %s: %w", user, err)
	}
	got, err := cli.UserGet(ctx, user)
	if err != nil {
		return fmt.Errorf("reading etcd user %s: %w", user, err)
	}
	if slices.Contains(got.Roles, role) {
		return nil
	}
	if _, err := cli.UserGrantRole(ctx, user, role); err != nil {
		return fmt.Errorf("granting etcd user %s the role %s: %w", user, role, err)
	}
	return nil
}
