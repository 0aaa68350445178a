// SPDX-License-Identifier: GPL-2.0
/*
 * vexfs - a tiny in-memory filesystem with fault injection, used as the
 * module under test by the vexfs crash harness.
 *
 * The filesystem itself is small but real: mount/unmount, create, mkdir,
 * unlink, rmdir, rename, read, write, truncate, readdir, permissions.
 * File data lives in a kmalloc'd buffer per inode (no page cache).
 *
 * Every mount "reads" an on-disk superblock that is synthesised from the
 * mount options, and validates it (magic, version, checksum), so a corrupted
 * superblock can be simulated with "-o sb=corrupt" or "-o magic=0x...": the
 * mount then fails cleanly with -EUCLEAN.
 *
 * Fault injection (see README.md in guest-image/):
 *   /sys/kernel/debug/vexfs/trigger  write a fault name: fires it now, from
 *                                    the debugfs write handler (syscall path)
 *   /sys/kernel/debug/vexfs/arm      write a fault name: fires it on the next
 *                                    write(2) to any vexfs regular file
 *   mount -o fault=NAME              same as arm, but only for that mount
 *   reading trigger lists the fault names.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/version.h>
#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/fs_parser.h>
#include <linux/pagemap.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/debugfs.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/list.h>
#include <linux/kthread.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/preempt.h>
#include <linux/statfs.h>
#include <linux/kfence.h>
#include <linux/compiler.h>

#define VEXFS_MAGIC		0x56455846	/* "VEXF" */
#define VEXFS_VERSION		1
#define VEXFS_INODE_MAGIC	0x76784e4f	/* "vxNO" */
#define VEXFS_MAX_FILE_SIZE	(4UL << 20)	/* 4 MiB per file */
#define VEXFS_FAULT_NAME_MAX	32

/* ------------------------------------------------------------------------ */
/* Kernel API compatibility: 6.1 (user_namespace) vs >= 6.3 (mnt_idmap).     */
/* ------------------------------------------------------------------------ */

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#define VEXFS_IDMAP_T		struct mnt_idmap
#define VEXFS_NOP_IDMAP		(&nop_mnt_idmap)
#else
#define VEXFS_IDMAP_T		struct user_namespace
#define VEXFS_NOP_IDMAP		(&init_user_ns)
#endif

static void vexfs_inode_init_times(struct inode *inode)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
	simple_inode_init_ts(inode);
#else
	inode->i_atime = inode->i_mtime = inode->i_ctime = current_time(inode);
#endif
}

static void vexfs_inode_touch_mc(struct inode *inode)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
	inode_set_mtime_to_ts(inode, inode_set_ctime_current(inode));
#else
	inode->i_mtime = inode->i_ctime = current_time(inode);
#endif
}

/* ------------------------------------------------------------------------ */
/* Module parameters                                                         */
/* ------------------------------------------------------------------------ */

static unsigned int leak_per_mount_kb;
module_param(leak_per_mount_kb, uint, 0644);
MODULE_PARM_DESC(leak_per_mount_kb,
		 "Leak this many KiB of kmalloc memory on every mount (0 = off)");

static unsigned int leak_kb = 1024;
module_param(leak_kb, uint, 0644);
MODULE_PARM_DESC(leak_kb, "KiB leaked by one 'leak' trigger (default 1024)");

static unsigned int softlockup_secs = 30;
module_param(softlockup_secs, uint, 0644);
MODULE_PARM_DESC(softlockup_secs,
		 "Seconds the 'softlockup' fault spins with preemption off (default 30)");

static unsigned int kfence_tries = 2000;
module_param(kfence_tries, uint, 0644);
MODULE_PARM_DESC(kfence_tries,
		 "Allocations tried to obtain a KFENCE object for uaf/oob (default 2000)");

/* ------------------------------------------------------------------------ */
/* In-memory structures                                                      */
/* ------------------------------------------------------------------------ */

/* The "on-disk" superblock, synthesised at mount time from the options. */
struct vexfs_disk_super {
	__le32 magic;
	__le32 version;
	__le32 max_file_size;
	__le32 checksum;	/* xor of the words above with VEXFS_MAGIC */
};

struct vexfs_mount_opts {
	bool corrupt_sb;
	bool have_magic;
	u32 magic;
	unsigned int leak_kb;
	char fault[VEXFS_FAULT_NAME_MAX];
};

struct vexfs_sb_info {
	struct vexfs_disk_super dsb;
	char fault[VEXFS_FAULT_NAME_MAX];	/* armed per-mount fault */
	spinlock_t lock;
	unsigned long nr_files;
};

struct vexfs_inode_info {
	u32 magic;		/* VEXFS_INODE_MAGIC while healthy */
	struct mutex lock;	/* protects data/size/cap */
	char *data;
	size_t size;
	size_t cap;
	struct list_head list;	/* on vexfs_inodes */
	unsigned long ino;
};

static LIST_HEAD(vexfs_inodes);
static DEFINE_SPINLOCK(vexfs_inodes_lock);

static DEFINE_SPINLOCK(vexfs_arm_lock);
static char vexfs_armed_fault[VEXFS_FAULT_NAME_MAX];

static u64 vexfs_leaked_bytes;
static u64 vexfs_mount_count;
static u64 vexfs_corrupt_detected;

static struct dentry *vexfs_debugfs_dir;

static const struct super_operations vexfs_super_ops;
static const struct inode_operations vexfs_dir_inode_ops;
static const struct inode_operations vexfs_file_inode_ops;
static const struct file_operations vexfs_file_ops;

static int vexfs_fire_fault(const char *name);

static inline struct vexfs_inode_info *VEXFS_I(struct inode *inode)
{
	return inode->i_private;
}

/* ------------------------------------------------------------------------ */
/* Inode integrity                                                           */
/* ------------------------------------------------------------------------ */

/*
 * Validate an inode before touching its data: a corrupted inode (see the
 * corrupt_inode fault) must be detected and fail I/O safely with -EUCLEAN.
 */
static int vexfs_check_inode(struct inode *inode, const char *op)
{
	struct vexfs_inode_info *vi = VEXFS_I(inode);
	u32 magic;

	if (!vi) {
		pr_err_ratelimited("inode %lu: no in-memory inode info during %s, failing with -EUCLEAN\n",
				   inode->i_ino, op);
		return -EUCLEAN;
	}
	magic = READ_ONCE(vi->magic);
	if (magic != VEXFS_INODE_MAGIC || vi->size > vi->cap ||
	    vi->cap > VEXFS_MAX_FILE_SIZE) {
		vexfs_corrupt_detected++;
		pr_err_ratelimited("corrupted inode %lu detected during %s: magic 0x%08x (expected 0x%08x), size %zu, capacity %zu; failing with -EUCLEAN\n",
				   inode->i_ino, op, magic, VEXFS_INODE_MAGIC,
				   vi->size, vi->cap);
		return -EUCLEAN;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Inodes                                                                    */
/* ------------------------------------------------------------------------ */

static struct inode *vexfs_get_inode(struct super_block *sb,
				     const struct inode *dir, umode_t mode)
{
	struct inode *inode = new_inode(sb);
	struct vexfs_inode_info *vi;

	if (!inode)
		return NULL;

	vi = kzalloc(sizeof(*vi), GFP_KERNEL);
	if (!vi) {
		iput(inode);
		return NULL;
	}
	vi->magic = VEXFS_INODE_MAGIC;
	mutex_init(&vi->lock);
	INIT_LIST_HEAD(&vi->list);

	inode->i_ino = get_next_ino();
	vi->ino = inode->i_ino;
	inode->i_private = vi;
	inode_init_owner(VEXFS_NOP_IDMAP, inode, dir, mode);
	vexfs_inode_init_times(inode);

	switch (mode & S_IFMT) {
	case S_IFREG:
		inode->i_op = &vexfs_file_inode_ops;
		inode->i_fop = &vexfs_file_ops;
		spin_lock(&vexfs_inodes_lock);
		list_add_tail(&vi->list, &vexfs_inodes);
		spin_unlock(&vexfs_inodes_lock);
		break;
	case S_IFDIR:
		inode->i_op = &vexfs_dir_inode_ops;
		inode->i_fop = &simple_dir_operations;
		inc_nlink(inode);	/* "." */
		break;
	default:
		init_special_inode(inode, mode, 0);
		break;
	}
	return inode;
}

static void vexfs_evict_inode(struct inode *inode)
{
	struct vexfs_inode_info *vi = VEXFS_I(inode);

	truncate_inode_pages_final(&inode->i_data);
	clear_inode(inode);
	if (!vi)
		return;
	spin_lock(&vexfs_inodes_lock);
	if (!list_empty(&vi->list))
		list_del_init(&vi->list);
	spin_unlock(&vexfs_inodes_lock);
	/* Never trust size/cap here: they may have been corrupted on purpose. */
	kfree(vi->data);
	kfree(vi);
	inode->i_private = NULL;
}

static int vexfs_mknod(VEXFS_IDMAP_T *idmap, struct inode *dir,
		       struct dentry *dentry, umode_t mode, dev_t dev)
{
	struct inode *inode = vexfs_get_inode(dir->i_sb, dir, mode);
	struct vexfs_sb_info *sbi = dir->i_sb->s_fs_info;

	if (!inode)
		return -ENOSPC;
	if (S_ISDIR(mode))
		inc_nlink(dir);
	d_instantiate(dentry, inode);
	dget(dentry);		/* pin it: this is an in-memory fs */
	vexfs_inode_touch_mc(dir);
	spin_lock(&sbi->lock);
	sbi->nr_files++;
	spin_unlock(&sbi->lock);
	return 0;
}

static int vexfs_create(VEXFS_IDMAP_T *idmap, struct inode *dir,
			struct dentry *dentry, umode_t mode, bool excl)
{
	return vexfs_mknod(idmap, dir, dentry, mode | S_IFREG, 0);
}

static int vexfs_mkdir(VEXFS_IDMAP_T *idmap, struct inode *dir,
		       struct dentry *dentry, umode_t mode)
{
	return vexfs_mknod(idmap, dir, dentry, mode | S_IFDIR, 0);
}

/* Resize the data buffer of a healthy inode; caller holds vi->lock. */
static int vexfs_resize(struct vexfs_inode_info *vi, size_t new_size)
{
	if (new_size > VEXFS_MAX_FILE_SIZE)
		return -EFBIG;
	if (new_size > vi->cap) {
		size_t cap = max_t(size_t, new_size, 2 * vi->cap);
		char *p;

		cap = min_t(size_t, max_t(size_t, cap, 64), VEXFS_MAX_FILE_SIZE);
		p = krealloc(vi->data, cap, GFP_KERNEL);
		if (!p)
			return -ENOMEM;
		memset(p + vi->cap, 0, cap - vi->cap);
		vi->data = p;
		vi->cap = cap;
	}
	if (new_size < vi->size)
		memset(vi->data + new_size, 0, vi->size - new_size);
	vi->size = new_size;
	return 0;
}

static int vexfs_setattr(VEXFS_IDMAP_T *idmap, struct dentry *dentry,
			 struct iattr *attr)
{
	struct inode *inode = d_inode(dentry);
	int err;

	err = setattr_prepare(idmap, dentry, attr);
	if (err)
		return err;

	if ((attr->ia_valid & ATTR_SIZE) && S_ISREG(inode->i_mode)) {
		struct vexfs_inode_info *vi = VEXFS_I(inode);

		err = vexfs_check_inode(inode, "truncate");
		if (err)
			return err;
		mutex_lock(&vi->lock);
		err = vexfs_resize(vi, attr->ia_size);
		mutex_unlock(&vi->lock);
		if (err)
			return err;
		i_size_write(inode, attr->ia_size);
		vexfs_inode_touch_mc(inode);
	}
	setattr_copy(idmap, inode, attr);
	mark_inode_dirty(inode);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* File I/O                                                                  */
/* ------------------------------------------------------------------------ */

static ssize_t vexfs_file_read(struct file *file, char __user *buf,
			       size_t len, loff_t *ppos)
{
	struct inode *inode = file_inode(file);
	struct vexfs_inode_info *vi = VEXFS_I(inode);
	ssize_t ret;
	loff_t pos = *ppos;

	ret = vexfs_check_inode(inode, "read");
	if (ret)
		return ret;
	if (pos < 0)
		return -EINVAL;

	mutex_lock(&vi->lock);
	if (pos >= vi->size) {
		ret = 0;
		goto out;
	}
	len = min_t(size_t, len, vi->size - pos);
	if (copy_to_user(buf, vi->data + pos, len)) {
		ret = -EFAULT;
		goto out;
	}
	*ppos = pos + len;
	ret = len;
out:
	mutex_unlock(&vi->lock);
	file_accessed(file);
	return ret;
}

/* Fire a fault armed globally (debugfs "arm") or on this mount (-o fault=). */
static void vexfs_fire_armed_fault(struct super_block *sb)
{
	struct vexfs_sb_info *sbi = sb->s_fs_info;
	char name[VEXFS_FAULT_NAME_MAX];

	name[0] = '\0';
	spin_lock(&vexfs_arm_lock);
	if (vexfs_armed_fault[0]) {
		strscpy(name, vexfs_armed_fault, sizeof(name));
		vexfs_armed_fault[0] = '\0';
	}
	spin_unlock(&vexfs_arm_lock);
	if (!name[0]) {
		spin_lock(&sbi->lock);
		if (sbi->fault[0]) {
			strscpy(name, sbi->fault, sizeof(name));
			sbi->fault[0] = '\0';
		}
		spin_unlock(&sbi->lock);
	}
	if (name[0]) {
		pr_warn("firing armed fault '%s' in the file write path\n", name);
		vexfs_fire_fault(name);
	}
}

static ssize_t vexfs_file_write(struct file *file, const char __user *buf,
				size_t len, loff_t *ppos)
{
	struct inode *inode = file_inode(file);
	struct vexfs_inode_info *vi = VEXFS_I(inode);
	loff_t pos;
	ssize_t ret;

	vexfs_fire_armed_fault(inode->i_sb);

	ret = vexfs_check_inode(inode, "write");
	if (ret)
		return ret;

	inode_lock(inode);
	mutex_lock(&vi->lock);
	pos = (file->f_flags & O_APPEND) ? vi->size : *ppos;
	if (pos < 0 || pos + len > VEXFS_MAX_FILE_SIZE) {
		ret = -EFBIG;
		goto out;
	}
	if (pos + len > vi->size) {
		ret = vexfs_resize(vi, pos + len);
		if (ret)
			goto out;
	}
	if (copy_from_user(vi->data + pos, buf, len)) {
		ret = -EFAULT;
		goto out;
	}
	*ppos = pos + len;
	ret = len;
	i_size_write(inode, vi->size);
	vexfs_inode_touch_mc(inode);
out:
	mutex_unlock(&vi->lock);
	inode_unlock(inode);
	return ret;
}

static int vexfs_file_open(struct inode *inode, struct file *file)
{
	return vexfs_check_inode(inode, "open");
}

static const struct file_operations vexfs_file_ops = {
	.owner		= THIS_MODULE,
	.open		= vexfs_file_open,
	.read		= vexfs_file_read,
	.write		= vexfs_file_write,
	.llseek		= generic_file_llseek,
	.fsync		= noop_fsync,
};

static const struct inode_operations vexfs_file_inode_ops = {
	.setattr	= vexfs_setattr,
	.getattr	= simple_getattr,
};

static const struct inode_operations vexfs_dir_inode_ops = {
	.create		= vexfs_create,
	.lookup		= simple_lookup,
	.link		= simple_link,
	.unlink		= simple_unlink,
	.mkdir		= vexfs_mkdir,
	.rmdir		= simple_rmdir,
	.mknod		= vexfs_mknod,
	.rename		= simple_rename,
	.setattr	= vexfs_setattr,
	.getattr	= simple_getattr,
};

/* ------------------------------------------------------------------------ */
/* Superblock                                                                */
/* ------------------------------------------------------------------------ */

static u32 vexfs_dsb_checksum(const struct vexfs_disk_super *dsb)
{
	return le32_to_cpu(dsb->magic) ^ le32_to_cpu(dsb->version) ^
	       le32_to_cpu(dsb->max_file_size) ^ VEXFS_MAGIC;
}

static int vexfs_check_super(struct super_block *sb,
			     const struct vexfs_disk_super *dsb)
{
	u32 magic = le32_to_cpu(dsb->magic);
	u32 csum = le32_to_cpu(dsb->checksum);

	if (magic != VEXFS_MAGIC) {
		pr_err("corrupted superblock: bad magic 0x%08x (expected 0x%08x), refusing to mount\n",
		       magic, VEXFS_MAGIC);
		return -EUCLEAN;
	}
	if (le32_to_cpu(dsb->version) != VEXFS_VERSION) {
		pr_err("corrupted superblock: unsupported version %u, refusing to mount\n",
		       le32_to_cpu(dsb->version));
		return -EINVAL;
	}
	if (csum != vexfs_dsb_checksum(dsb)) {
		pr_err("corrupted superblock: checksum 0x%08x does not match 0x%08x, refusing to mount\n",
		       csum, vexfs_dsb_checksum(dsb));
		return -EUCLEAN;
	}
	return 0;
}

static void vexfs_leak(unsigned int kb, const char *why)
{
	unsigned int i;

	/*
	 * 1 KiB objects so the leak shows up in the slab (SUnreclaim in
	 * /proc/meminfo): large kmallocs would bypass the slab allocator.
	 */
	for (i = 0; i < kb; i++) {
		void *p = kmalloc(1024, GFP_KERNEL);

		if (!p)
			break;
		memset(p, 0x5a, 1024);
		/* intentionally never freed */
		vexfs_leaked_bytes += 1024;
	}
	pr_debug("leaked %u KiB (%s)\n", i, why);
}

static int vexfs_fill_super(struct super_block *sb, struct fs_context *fc)
{
	struct vexfs_mount_opts *opts = fc->fs_private;
	struct vexfs_sb_info *sbi;
	struct inode *root;
	int err;

	sbi = kzalloc(sizeof(*sbi), GFP_KERNEL);
	if (!sbi)
		return -ENOMEM;
	spin_lock_init(&sbi->lock);
	sb->s_fs_info = sbi;

	/* "Read" the on-disk superblock (synthesised from the options). */
	sbi->dsb.magic = cpu_to_le32(opts->have_magic ? opts->magic : VEXFS_MAGIC);
	sbi->dsb.version = cpu_to_le32(VEXFS_VERSION);
	sbi->dsb.max_file_size = cpu_to_le32(VEXFS_MAX_FILE_SIZE);
	sbi->dsb.checksum = cpu_to_le32(vexfs_dsb_checksum(&sbi->dsb));
	if (opts->corrupt_sb) {
		/* simulate on-disk damage: scribble over magic and checksum */
		sbi->dsb.magic = cpu_to_le32(0xdeadbeef);
		sbi->dsb.checksum = cpu_to_le32(0x0badf00d);
	}
	err = vexfs_check_super(sb, &sbi->dsb);
	if (err)
		return err;	/* sbi freed by vexfs_kill_sb */

	strscpy(sbi->fault, opts->fault, sizeof(sbi->fault));

	sb->s_maxbytes = VEXFS_MAX_FILE_SIZE;
	sb->s_blocksize = PAGE_SIZE;
	sb->s_blocksize_bits = PAGE_SHIFT;
	sb->s_magic = VEXFS_MAGIC;
	sb->s_op = &vexfs_super_ops;
	sb->s_time_gran = 1;

	root = vexfs_get_inode(sb, NULL, S_IFDIR | 0755);
	sb->s_root = d_make_root(root);
	if (!sb->s_root)
		return -ENOMEM;

	if (opts->leak_kb)
		vexfs_leak(opts->leak_kb, "mount option leak_kb");
	else if (READ_ONCE(leak_per_mount_kb))
		vexfs_leak(READ_ONCE(leak_per_mount_kb), "leak_per_mount_kb");
	vexfs_mount_count++;
	return 0;
}

static int vexfs_statfs(struct dentry *dentry, struct kstatfs *buf)
{
	return simple_statfs(dentry, buf);
}

static const struct super_operations vexfs_super_ops = {
	.statfs		= vexfs_statfs,
	.drop_inode	= generic_delete_inode,
	.evict_inode	= vexfs_evict_inode,
};

/* ------------------------------------------------------------------------ */
/* Mount options (fs_context)                                                */
/* ------------------------------------------------------------------------ */

enum { Opt_sb, Opt_magic, Opt_leak_kb, Opt_fault };

static const struct fs_parameter_spec vexfs_fs_parameters[] = {
	fsparam_string("sb", Opt_sb),		/* sb=ok | sb=corrupt */
	fsparam_string("magic", Opt_magic),	/* on-disk magic, e.g. 0x56455846 */
	fsparam_u32("leak_kb", Opt_leak_kb),	/* leak N KiB at mount */
	fsparam_string("fault", Opt_fault),	/* arm a fault for this mount */
	{}
};

static int vexfs_parse_param(struct fs_context *fc, struct fs_parameter *param)
{
	struct vexfs_mount_opts *opts = fc->fs_private;
	struct fs_parse_result result;
	int opt;

	opt = fs_parse(fc, vexfs_fs_parameters, param, &result);
	if (opt == -ENOPARAM)
		return 0;	/* ignore unknown options, like ramfs */
	if (opt < 0)
		return opt;

	switch (opt) {
	case Opt_sb:
		if (!strcmp(param->string, "corrupt"))
			opts->corrupt_sb = true;
		else if (!strcmp(param->string, "ok"))
			opts->corrupt_sb = false;
		else
			return invalf(fc, "vexfs: sb= must be 'ok' or 'corrupt'");
		break;
	case Opt_magic:
		/* fsparam_u32hex is unusable on 6.1 (fs_param_is_u32_hex missing) */
		if (kstrtou32(param->string, 0, &opts->magic))
			return invalf(fc, "vexfs: bad magic= value");
		opts->have_magic = true;
		break;
	case Opt_leak_kb:
		opts->leak_kb = result.uint_32;
		break;
	case Opt_fault:
		strscpy(opts->fault, param->string, sizeof(opts->fault));
		break;
	}
	return 0;
}

static int vexfs_get_tree(struct fs_context *fc)
{
	return get_tree_nodev(fc, vexfs_fill_super);
}

static void vexfs_free_fc(struct fs_context *fc)
{
	kfree(fc->fs_private);
}

static const struct fs_context_operations vexfs_context_ops = {
	.free		= vexfs_free_fc,
	.parse_param	= vexfs_parse_param,
	.get_tree	= vexfs_get_tree,
};

static int vexfs_init_fs_context(struct fs_context *fc)
{
	struct vexfs_mount_opts *opts = kzalloc(sizeof(*opts), GFP_KERNEL);

	if (!opts)
		return -ENOMEM;
	fc->fs_private = opts;
	fc->ops = &vexfs_context_ops;
	return 0;
}

static void vexfs_kill_sb(struct super_block *sb)
{
	struct vexfs_sb_info *sbi = sb->s_fs_info;

	kill_litter_super(sb);
	kfree(sbi);
}

static struct file_system_type vexfs_fs_type = {
	.owner			= THIS_MODULE,
	.name			= "vexfs",
	.init_fs_context	= vexfs_init_fs_context,
	.kill_sb		= vexfs_kill_sb,
	/* no FS_USERNS_MOUNT: "-o fault=" must stay root-only */
};

/* ------------------------------------------------------------------------ */
/* Fault injection                                                           */
/* ------------------------------------------------------------------------ */

struct vexfs_victim {
	unsigned long state;
	unsigned long counter;
};

static DEFINE_MUTEX(vexfs_deadlock_mutex);
static DEFINE_MUTEX(vexfs_thread_deadlock_mutex);

/* Pin the module: after a fault that leaves a task stuck inside our code,
 * rmmod must fail with EBUSY instead of freeing code that is still in use. */
static void vexfs_pin_module(void)
{
	__module_get(THIS_MODULE);
}

static noinline void vexfs_fault_null(void)
{
	struct vexfs_victim *v = NULL;

	OPTIMIZER_HIDE_VAR(v);
	v->counter++;		/* NULL pointer dereference */
}

static noinline void vexfs_fault_bug(void)
{
	BUG();
}

static noinline void vexfs_fault_warn(void)
{
	int broken = 1;

	OPTIMIZER_HIDE_VAR(broken);
	WARN_ON(broken);
}

static noinline void vexfs_fault_panic(void)
{
	panic("vexfs: injected panic from vexfs_fault_panic");
}

static noinline void vexfs_fault_deadlock(void)
{
	vexfs_pin_module();
	mutex_lock(&vexfs_deadlock_mutex);
	mutex_lock(&vexfs_deadlock_mutex);	/* self-deadlock, D state forever */
	mutex_unlock(&vexfs_deadlock_mutex);
	mutex_unlock(&vexfs_deadlock_mutex);
}

static noinline int vexfs_deadlock_thread_fn(void *arg)
{
	mutex_lock(&vexfs_thread_deadlock_mutex);
	mutex_lock(&vexfs_thread_deadlock_mutex);	/* self-deadlock */
	mutex_unlock(&vexfs_thread_deadlock_mutex);
	mutex_unlock(&vexfs_thread_deadlock_mutex);
	return 0;
}

static noinline int vexfs_fault_thread_deadlock(void)
{
	struct task_struct *t;

	vexfs_pin_module();
	t = kthread_run(vexfs_deadlock_thread_fn, NULL, "vexfs_deadlockd");
	if (IS_ERR(t))
		return PTR_ERR(t);
	return 0;
}

static noinline void vexfs_fault_softlockup(void)
{
	unsigned long deadline;

	vexfs_pin_module();
	preempt_disable();
	deadline = jiffies + READ_ONCE(softlockup_secs) * HZ;
	while (time_before(jiffies, deadline))
		cpu_relax();
	preempt_enable();
}

static noinline void vexfs_fault_leak(void)
{
	vexfs_leak(READ_ONCE(leak_kb), "leak trigger");
}

/*
 * Allocate until the slab hands out a KFENCE-guarded object (with
 * kfence.sample_interval=1 the KFENCE gate opens every millisecond).
 */
static noinline void *vexfs_alloc_kfence_object(size_t size)
{
	unsigned int i, tries = READ_ONCE(kfence_tries);

	for (i = 0; i < tries; i++) {
		void *p = kmalloc(size, GFP_KERNEL);

		if (!p)
			return NULL;
		if (is_kfence_address(p)) {
			pr_info("got a KFENCE object after %u allocations\n", i + 1);
			return p;
		}
		kfree(p);
		if (i % 16 == 15)
			usleep_range(1000, 2000);
	}
	pr_err("no KFENCE object after %u allocations: is the kernel booted with kfence.sample_interval=1 (CONFIG_KFENCE=%s)?\n",
	       tries, IS_ENABLED(CONFIG_KFENCE) ? "y" : "n");
	return NULL;
}

static noinline int vexfs_fault_uaf(void)
{
	struct vexfs_victim *v = vexfs_alloc_kfence_object(sizeof(*v));
	unsigned long val;

	if (!v)
		return -EOPNOTSUPP;
	v->state = 1;
	kfree(v);
	OPTIMIZER_HIDE_VAR(v);
	val = READ_ONCE(v->state);	/* use after free */
	pr_info("use-after-free read returned %lu\n", val);
	return 0;
}

static noinline int vexfs_fault_oob(void)
{
	const size_t size = 32;
	char *p = vexfs_alloc_kfence_object(size);
	char *bad;
	char val;

	if (!p)
		return -EOPNOTSUPP;
	memset(p, 0, size);
	/*
	 * KFENCE puts the object either at the start of its page (guard page
	 * just before it) or at the end (guard page just after): read from
	 * whichever guard page is adjacent so the access always faults.
	 */
	if (offset_in_page(p) == 0)
		bad = p - 1;
	else
		bad = (char *)PAGE_ALIGN((unsigned long)p + size);
	OPTIMIZER_HIDE_VAR(bad);
	val = READ_ONCE(*bad);		/* out-of-bounds read */
	pr_info("out-of-bounds read returned %d\n", val);
	kfree(p);
	return 0;
}

/* Scribble over every regular-file inode: later I/O must detect it. */
static noinline int vexfs_fault_corrupt_inode(void)
{
	struct vexfs_inode_info *vi;
	unsigned int n = 0;

	spin_lock(&vexfs_inodes_lock);
	list_for_each_entry(vi, &vexfs_inodes, list) {
		WRITE_ONCE(vi->magic, 0xbadc0de5);
		vi->size = ~(size_t)0 >> 1;	/* absurd size: must not be trusted */
		n++;
	}
	spin_unlock(&vexfs_inodes_lock);
	pr_info("corrupted %u in-memory inodes\n", n);
	return n ? 0 : -ENOENT;
}

/* ---- faults for the debug kernels' detectors (KASAN, lockdep, kmemleak) ---- */
/*
 * Each needs its detector: without it the bug would go unseen, so the fault
 * refuses (-EOPNOTSUPP) rather than let a test pass on a kernel that cannot
 * catch it. Plan tests for them say requires = ["CONFIG_KASAN"] and so on.
 */
static DEFINE_MUTEX(vexfs_abba_a);
static DEFINE_MUTEX(vexfs_abba_b);

static noinline int vexfs_fault_kasan_uaf(void)
{
	struct vexfs_victim *v;
	unsigned long val;

	if (!IS_ENABLED(CONFIG_KASAN))
		return -EOPNOTSUPP;
	v = kmalloc(sizeof(*v), GFP_KERNEL);
	if (!v)
		return -ENOMEM;
	v->state = 1;
	kfree(v);
	OPTIMIZER_HIDE_VAR(v);
	val = READ_ONCE(v->state);	/* KASAN: slab-use-after-free */
	pr_info("kasan_uaf read returned %lu\n", val);
	return 0;
}

static noinline int vexfs_fault_kasan_oob(void)
{
	const size_t size = 37;	/* not a multiple of 8: KASAN's byte-exact redzone */
	char *p, *bad;
	char val;

	if (!IS_ENABLED(CONFIG_KASAN))
		return -EOPNOTSUPP;
	p = kzalloc(size, GFP_KERNEL);
	if (!p)
		return -ENOMEM;
	bad = p + size;
	OPTIMIZER_HIDE_VAR(bad);
	val = READ_ONCE(*bad);		/* KASAN: slab-out-of-bounds */
	pr_info("kasan_oob read returned %d\n", val);
	kfree(p);
	return 0;
}

/* A then B, later B then A, in one task: lockdep reports the circular
 * dependency at once, although nothing ever blocks. */
static noinline int vexfs_fault_abba(void)
{
	if (!IS_ENABLED(CONFIG_PROVE_LOCKING))
		return -EOPNOTSUPP;
	mutex_lock(&vexfs_abba_a);
	mutex_lock(&vexfs_abba_b);
	mutex_unlock(&vexfs_abba_b);
	mutex_unlock(&vexfs_abba_a);
	mutex_lock(&vexfs_abba_b);
	mutex_lock(&vexfs_abba_a);	/* possible circular locking dependency */
	mutex_unlock(&vexfs_abba_a);
	mutex_unlock(&vexfs_abba_b);
	return 0;
}

/* One object whose last pointer is dropped: the next kmemleak scan reports it
 * as unreferenced, with this function in its allocation backtrace. */
static noinline int vexfs_fault_kmemleak(void)
{
	void *p;

	if (!IS_ENABLED(CONFIG_DEBUG_KMEMLEAK))
		return -EOPNOTSUPP;
	p = kmalloc(256, GFP_KERNEL);
	if (!p)
		return -ENOMEM;
	memset(p, 0x5a, 256);
	pr_info("kmemleak: dropped the only pointer to %zu bytes\n", (size_t)256);
	OPTIMIZER_HIDE_VAR(p);
	p = NULL;
	return 0;
}

struct vexfs_fault {
	const char *name;
	const char *what;
};

static const struct vexfs_fault vexfs_faults[] = {
	{ "null", "NULL pointer dereference (oops)" },
	{ "bug", "BUG() (invalid opcode oops)" },
	{ "warn", "WARN_ON (WARNING, system continues)" },
	{ "panic", "panic()" },
	{ "deadlock", "mutex self-deadlock in the calling task (hung task)" },
	{ "thread_deadlock", "mutex self-deadlock in kthread vexfs_deadlockd (hung task)" },
	{ "softlockup", "busy loop with preemption off for softlockup_secs (soft lockup)" },
	{ "leak", "kmalloc leak of leak_kb KiB (SUnreclaim grows, nothing printed)" },
	{ "uaf", "use-after-free read of a KFENCE object" },
	{ "oob", "out-of-bounds read of a KFENCE object" },
	{ "corrupt_inode", "corrupt all in-memory file inodes (I/O then fails with EUCLEAN)" },
	/* debug kernels only (EOPNOTSUPP elsewhere) */
	{ "kasan_uaf", "use-after-free read of a slab object (KASAN)" },
	{ "kasan_oob", "out-of-bounds read past a slab object (KASAN)" },
	{ "abba", "ABBA lock order in one task (lockdep circular dependency)" },
	{ "kmemleak", "an unreferenced 256-byte object (kmemleak scan)" },
};

static int vexfs_fire_fault(const char *name)
{
	/* warning level so it reaches a console booted with loglevel=5 */
	pr_warn("injecting fault '%s'\n", name);

	if (!strcmp(name, "null"))
		vexfs_fault_null();
	else if (!strcmp(name, "bug"))
		vexfs_fault_bug();
	else if (!strcmp(name, "warn"))
		vexfs_fault_warn();
	else if (!strcmp(name, "panic"))
		vexfs_fault_panic();
	else if (!strcmp(name, "deadlock"))
		vexfs_fault_deadlock();
	else if (!strcmp(name, "thread_deadlock"))
		return vexfs_fault_thread_deadlock();
	else if (!strcmp(name, "softlockup"))
		vexfs_fault_softlockup();
	else if (!strcmp(name, "leak"))
		vexfs_fault_leak();
	else if (!strcmp(name, "uaf"))
		return vexfs_fault_uaf();
	else if (!strcmp(name, "oob"))
		return vexfs_fault_oob();
	else if (!strcmp(name, "corrupt_inode"))
		return vexfs_fault_corrupt_inode();
	else if (!strcmp(name, "kasan_uaf"))
		return vexfs_fault_kasan_uaf();
	else if (!strcmp(name, "kasan_oob"))
		return vexfs_fault_kasan_oob();
	else if (!strcmp(name, "abba"))
		return vexfs_fault_abba();
	else if (!strcmp(name, "kmemleak"))
		return vexfs_fault_kmemleak();
	else
		return -EINVAL;
	return 0;
}

static bool vexfs_fault_known(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(vexfs_faults); i++)
		if (!strcmp(name, vexfs_faults[i].name))
			return true;
	return false;
}

static int vexfs_copy_fault_name(char *name, const char __user *ubuf,
				 size_t len)
{
	char buf[VEXFS_FAULT_NAME_MAX];
	char *s;

	if (len == 0 || len >= VEXFS_FAULT_NAME_MAX)
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';
	s = strim(buf);
	if (!vexfs_fault_known(s)) {
		pr_warn("unknown fault '%s' (read the trigger file for the list)\n", s);
		return -EINVAL;
	}
	strscpy(name, s, VEXFS_FAULT_NAME_MAX);
	return 0;
}

static noinline ssize_t vexfs_trigger_write(struct file *file,
					    const char __user *ubuf,
					    size_t len, loff_t *ppos)
{
	char name[VEXFS_FAULT_NAME_MAX];
	int err;

	err = vexfs_copy_fault_name(name, ubuf, len);
	if (err)
		return err;
	err = vexfs_fire_fault(name);
	return err ? err : len;
}

static ssize_t vexfs_list_read(struct file *file, char __user *ubuf,
			       size_t len, loff_t *ppos)
{
	char buf[1024];
	size_t i, n = 0;

	for (i = 0; i < ARRAY_SIZE(vexfs_faults); i++)
		n += scnprintf(buf + n, sizeof(buf) - n, "%s\t%s\n",
			       vexfs_faults[i].name, vexfs_faults[i].what);
	return simple_read_from_buffer(ubuf, len, ppos, buf, n);
}

static ssize_t vexfs_arm_write(struct file *file, const char __user *ubuf,
			       size_t len, loff_t *ppos)
{
	char name[VEXFS_FAULT_NAME_MAX];
	int err;

	err = vexfs_copy_fault_name(name, ubuf, len);
	if (err)
		return err;
	spin_lock(&vexfs_arm_lock);
	strscpy(vexfs_armed_fault, name, sizeof(vexfs_armed_fault));
	spin_unlock(&vexfs_arm_lock);
	pr_info("armed fault '%s' for the next file write\n", name);
	return len;
}

static ssize_t vexfs_arm_read(struct file *file, char __user *ubuf,
			      size_t len, loff_t *ppos)
{
	char buf[VEXFS_FAULT_NAME_MAX + 1];
	int n;

	spin_lock(&vexfs_arm_lock);
	n = scnprintf(buf, sizeof(buf), "%s\n", vexfs_armed_fault);
	spin_unlock(&vexfs_arm_lock);
	return simple_read_from_buffer(ubuf, len, ppos, buf, n);
}

static const struct file_operations vexfs_trigger_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= vexfs_list_read,
	.write	= vexfs_trigger_write,
	.llseek	= default_llseek,
};

static const struct file_operations vexfs_arm_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= vexfs_arm_read,
	.write	= vexfs_arm_write,
	.llseek	= default_llseek,
};

/* ------------------------------------------------------------------------ */
/* Module init/exit                                                          */
/* ------------------------------------------------------------------------ */

static int __init vexfs_init(void)
{
	int err;

	err = register_filesystem(&vexfs_fs_type);
	if (err) {
		pr_err("register_filesystem failed: %d\n", err);
		return err;
	}

	vexfs_debugfs_dir = debugfs_create_dir("vexfs", NULL);
	debugfs_create_file("trigger", 0600, vexfs_debugfs_dir, NULL,
			    &vexfs_trigger_fops);
	debugfs_create_file("arm", 0600, vexfs_debugfs_dir, NULL,
			    &vexfs_arm_fops);
	debugfs_create_u64("leaked_bytes", 0444, vexfs_debugfs_dir,
			   &vexfs_leaked_bytes);
	debugfs_create_u64("mounts", 0444, vexfs_debugfs_dir,
			   &vexfs_mount_count);
	debugfs_create_u64("corruptions_detected", 0444, vexfs_debugfs_dir,
			   &vexfs_corrupt_detected);

	pr_info("filesystem registered (kfence %s)\n",
		IS_ENABLED(CONFIG_KFENCE) ? "available" : "not built in");
	return 0;
}

static void __exit vexfs_exit(void)
{
	debugfs_remove_recursive(vexfs_debugfs_dir);
	unregister_filesystem(&vexfs_fs_type);
	pr_info("filesystem unregistered\n");
}

module_init(vexfs_init);
module_exit(vexfs_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("vexfs crash harness");
MODULE_DESCRIPTION("vexfs: tiny in-memory filesystem with fault injection");
MODULE_ALIAS_FS("vexfs");
