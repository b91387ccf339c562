package hostnet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Each VM's VMM runs as a user of its own, USER-NAME (config.VM.User), with
// a group of the same name, as Firecracker's jailer gives each microVM its
// own uid: it owns the VM's TAP, its group may use the VM's virtiofs
// sockets, and nothing of another VM's is open to it. The user has no home
// and no shell, and its comment marks it as the program's ("microvm VM
// NAME"): the program never runs a VMM as, changes or deletes a user
// without that mark. With KVM the user is also in the group kvm, which
// owns /dev/kvm on most hosts.
//
// A VM that leaves the file keeps its user, as it keeps its data: a VM
// added back under the same name gets the same user. `microvm destroy
// NAME --data` deletes both. The user owns no file outside the VM's run
// directory (the guest's files belong to the guest's own uids), so
// nothing is left behind for a later user with the same uid.

// KVMGroup is the group that may open /dev/kvm on most distributions.
const KVMGroup = "kvm"

// UserComment is the comment (GECOS field) that marks the user of the VM
// called name as the program's.
func UserComment(name string) string { return "microvm VM " + name }

// AddUser creates the system user a VM's VMM runs as, with its own group,
// and in Groups.
type AddUser struct {
	Name, Comment string
	Groups        []string
}

// NewUser is the AddUser of vm's user.
func NewUser(vm *config.VM) *AddUser {
	_, err := user.LookupGroup(KVMGroup)
	return newUser(vm, err == nil)
}

// newUser is the AddUser of vm's user, in the kvm group if the host has one.
func newUser(vm *config.VM, kvm bool) *AddUser {
	a := &AddUser{Name: vm.User, Comment: UserComment(vm.Name)}
	if kvm {
		a.Groups = []string{KVMGroup}
	}
	return a
}

func (a *AddUser) args() []string {
	args := []string{"--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--user-group", "--comment", a.Comment}
	if len(a.Groups) > 0 {
		args = append(args, "--groups", strings.Join(a.Groups, ","))
	}
	return append(args, a.Name)
}

func (a *AddUser) String() string { return "useradd " + shellJoin(a.args()) }

func (a *AddUser) Apply() error {
	if u, err := user.Lookup(a.Name); err == nil {
		if u.Name != a.Comment {
			return fmt.Errorf("user %s exists and was not made by microvm (comment %q, not %q); it is left alone", a.Name, u.Name, a.Comment)
		}
		return nil
	}
	return runLocked("useradd", a.args()...)
}

// AddToGroup adds a VM's user to a group it lacks (kvm, made after it).
type AddToGroup struct{ User, Group string }

func (a *AddToGroup) String() string {
	return fmt.Sprintf("usermod --append --groups %s %s", a.Group, a.User)
}

func (a *AddToGroup) Apply() error {
	return runLocked("usermod", "--append", "--groups", a.Group, a.User)
}

// DelUser deletes a VM's user and its group, if it carries the mark of
// the VM called VM.
type DelUser struct{ Name, VM string }

func (a *DelUser) String() string { return "userdel " + a.Name }

func (a *DelUser) Apply() error {
	u, err := user.Lookup(a.Name)
	if err != nil {
		return nil // gone already
	}
	if u.Name != UserComment(a.VM) {
		return fmt.Errorf("user %s was not made by microvm (comment %q); it is left alone", a.Name, u.Name)
	}
	return runLocked("userdel", a.Name)
}

// checkUsers refuses a VM whose user name belongs to someone else.
func checkUsers(in *config.Infra, o *observed) error {
	for _, vm := range in.VMs {
		if c, ok := o.comments[vm.User]; ok && c != UserComment(vm.Name) {
			return fmt.Errorf("%s: vm.%s's VMM runs as user %s, which exists and was not made by microvm (its comment is %q, not %q); the program does not run a VMM as someone else's user: rename the VM, or set another [host] user prefix", in.Pos("vm."+vm.Name), vm.Name, vm.User, c, UserComment(vm.Name))
		}
	}
	return nil
}

// runLocked runs a shadow-utils command, trying again for a few seconds
// while another one holds the lock on /etc/passwd.
func runLocked(name string, args ...string) error {
	var out []byte
	var err error
	for range 20 {
		out, err = exec.Command(name, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "lock") {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %s: %w", name, args[len(args)-1], strings.TrimSpace(string(out)), err)
	}
	return nil
}

// shellJoin writes args as a shell would need them: quoted when they hold
// a space.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t'\"") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// IDs are a user's ids, as the kernel checks them.
type IDs struct {
	UID, GID uint32
	Groups   []uint32 // supplementary, such as kvm
}

// lookupOwner returns the uid and gid of user name: what a TAP's owner
// needs, without the groups LookupIDs reads too.
func lookupOwner(name string) (uid, gid uint32, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("looking up user %s: %w", name, err)
	}
	id, err1 := strconv.ParseUint(u.Uid, 10, 32)
	g, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("user %s: ids %q, %q: %w", name, u.Uid, u.Gid, err)
	}
	return uint32(id), uint32(g), nil
}

// LookupIDs returns the ids of user name.
func LookupIDs(name string) (IDs, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return IDs{}, fmt.Errorf("looking up user %s: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return IDs{}, fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return IDs{}, fmt.Errorf("user %s: gid %q: %w", name, u.Gid, err)
	}
	groups, err := u.GroupIds()
	if err != nil {
		return IDs{}, fmt.Errorf("listing the groups of user %s: %w", name, err)
	}
	id := IDs{UID: uint32(uid), GID: uint32(gid)}
	for _, g := range groups {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return IDs{}, fmt.Errorf("user %s: group id %q: %w", name, g, err)
		}
		id.Groups = append(id.Groups, uint32(n))
	}
	return id, nil
}

// userDB is what a plan knows of the VMs' users: their ids and comments,
// and the kvm group's id (nil when the host has none).
type userDB struct {
	ids      map[string]IDs
	comments map[string]string
	kvm      *uint32
}

// The files useradd writes, which readUsers reads.
var (
	passwdFile = "/etc/passwd"
	groupFile  = "/etc/group"
)

// readUsers looks up the users names, and the kvm group, reading
// /etc/passwd and /etc/group once rather than once per VM (useradd
// --system writes the program's users there). A name or the kvm group
// that is not in those files is looked up through os/user as before
// (NSS where the program is built with cgo).
func readUsers(names []string) (userDB, error) {
	db := userDB{ids: map[string]IDs{}, comments: map[string]string{}}
	passwd, _ := os.ReadFile(passwdFile) // missing: every name is looked up as below
	group, _ := os.ReadFile(groupFile)
	type entry struct {
		uid, gid uint32
		comment  string
	}
	local := map[string]entry{}
	for line := range strings.Lines(string(passwd)) {
		f := strings.Split(strings.TrimSpace(line), ":")
		if len(f) < 5 {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if _, seen := local[f[0]]; err1 == nil && err2 == nil && !seen {
			// The comment as os/user gives it: up to the first comma.
			comment, _, _ := strings.Cut(f[4], ",")
			local[f[0]] = entry{uint32(uid), uint32(gid), comment}
		}
	}
	member := map[string][]uint32{} // user name -> the groups listing it
	kvmLocal := false
	for line := range strings.Lines(string(group)) {
		f := strings.Split(strings.TrimSpace(line), ":")
		if len(f) < 4 {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		if f[0] == KVMGroup && !kvmLocal {
			kvmLocal = true
			kvm := uint32(gid)
			db.kvm = &kvm
		}
		for _, m := range strings.Split(f[3], ",") {
			if m != "" {
				member[m] = append(member[m], uint32(gid))
			}
		}
	}
	if !kvmLocal {
		if g, err := user.LookupGroup(KVMGroup); err == nil {
			// A group id that is not a number is no group the kernel knows.
			if id, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
				kvm := uint32(id)
				db.kvm = &kvm
			}
		}
	}
	for _, name := range names {
		if e, ok := local[name]; ok {
			// As getgrouplist gives them: the primary group first.
			groups := []uint32{e.gid}
			for _, g := range member[name] {
				if !slices.Contains(groups, g) {
					groups = append(groups, g)
				}
			}
			db.ids[name] = IDs{UID: e.uid, GID: e.gid, Groups: groups}
			db.comments[name] = e.comment
			continue
		}
		// A user that cannot be read is planned as missing: AddUser
		// then finds it, and checks its mark, when it is applied.
		if u, err := user.Lookup(name); err == nil {
			if id, err := LookupIDs(name); err == nil {
				db.ids[name] = id
				db.comments[name] = u.Name
			}
		}
	}
	return db, nil
}
