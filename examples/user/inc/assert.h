/* panic, warn, assert and static_assert for user programs. */
#ifndef JOS_INC_ASSERT_H
#define JOS_INC_ASSERT_H

#include <inc/stdio.h>

void _warn(const char *file, int line, const char *fmt, ...);
void _panic(const char *file, int line, const char *fmt, ...)
	__attribute__((noreturn));

#define warn(...)	_warn(__FILE__, __LINE__, __VA_ARGS__)
#define panic(...)	_panic(__FILE__, __LINE__, __VA_ARGS__)

#define assert(x)						\
	do {							\
		if (!(x))					\
			panic("assertion failed: %s", #x);	\
	} while (0)

/* Compile-time assertion; usable at file scope and inside functions. */
#define static_assert(x)	_Static_assert((x), #x)

#endif /* !JOS_INC_ASSERT_H */
