# Known words at a known address, for the ELF32 tests (PowerPC big-endian, i386 little-endian).
# Linked with -Ttext=0x01000000 -Tdata=0x02000000 by build.py.
	.text
	.globl	_start
_start:
	nop
	nop

	.data
	.globl	table
table:
	.long	0x11223344		# 0x02000000
	.long	-2			# 0x02000004
	.long	target			# 0x02000008: a pointer to target
	.long	0			# 0x0200000c
target:
	.long	0xdeadbeef		# 0x02000010
name:
	.asciz	"vmemfs_word"		# 0x02000014
